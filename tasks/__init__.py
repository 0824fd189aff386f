"""Prefect tasks: thin wrappers that call one ``forge`` stage each; retries and names on the decorator."""
