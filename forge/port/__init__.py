"""``forge port``: pangeo-forge-recipes recipes (0.9 and 0.10 styles) and feedstocks as forge recipes."""
