"""Storage notifications from the clouds and the trigger rules that map new objects to recipes."""
