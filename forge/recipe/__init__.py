"""The recipe model: file patterns, recipe classes, and finding and loading recipes (``recipes/<id>/``)."""
