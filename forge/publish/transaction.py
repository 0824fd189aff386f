"""A run's unpublished work, as values (it crosses from prepare to the store
batches and to finalize): no Icechunk or zarr import here (:mod:`forge.publish.icechunk` acts on it)."""

from __future__ import annotations

from dataclasses import dataclass

from forge.errors import ForgeError


@dataclass(frozen=True)
class Transaction:
    """One run's unpublished work: its branch, and the snapshot of ``main`` it started from."""

    url: str
    branch: str
    base: str


@dataclass(frozen=True)
class CatchUp:
    """A rebuild's finished, unpublished work, which appends published meanwhile: the rebuild appends
    the same (from the sources, with its own recipe) before it publishes again. ``url``: a Zarr store
    built beside the published one, or the Icechunk repository, with ``branch`` the rebuild's own;
    ``base``: what was published when the rebuild looked (a Zarr store's fingerprint, or ``main``'s
    snapshot), which it publishes over only if nothing moved it since."""

    url: str
    base: str | None
    branch: str | None = None


class RebuildBehind(ForgeError):
    """A rebuild (or its catch-up) could not publish: an append published first. Nothing was lost: the
    runner catches the rebuild up (:attr:`catch_up`) and publishes again."""

    def __init__(self, message: str, catch_up: CatchUp):
        super().__init__(message)
        self.catch_up = catch_up

    def __reduce__(self) -> tuple:  # raised on a worker, read in the flow
        return type(self), (str(self), self.catch_up)
