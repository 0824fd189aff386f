"""A run's unpublished work on an Icechunk target, as a value (it crosses from prepare to the store
batches and to finalize): no Icechunk or zarr import here (:mod:`forge.publish.icechunk` acts on it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Transaction:
    """One run's unpublished work: its branch, and the snapshot of ``main`` it started from."""

    url: str
    branch: str
    base: str
