"""Prefect tasks: thin wrappers that call one ``forge`` stage each, with retries and names on the decorator."""
