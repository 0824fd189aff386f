"""What a finished store is made of: a store with the same fingerprint is not built again."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from forge._version import __version__
from forge.engine.types import InputSummary, Template
from forge.recipe.recipes import XarrayZarrRecipe


def fingerprint(
    recipe: XarrayZarrRecipe,
    template: Template,
    summaries: Sequence[InputSummary],
    version: str | None = None,
) -> str:
    """What a finished store is made of: a store with the same fingerprint is not built again (a new
    minor version is: it rebuilds its major's store)."""
    h = hashlib.sha256(template.digest().encode())
    h.update(
        repr(
            (
                sorted(recipe.target_chunks.items()),
                sorted(recipe.target_shards.items()),
                recipe.inputs_per_chunk,
                recipe.zarr_format,
                sorted(recipe.attrs.items()),
                __version__,
                version,
            )
        ).encode()
    )
    return digest_inputs(h, summaries)


def digest_inputs(h: hashlib._Hash, summaries: Sequence[InputSummary]) -> str:
    """``h`` updated with every input's key, URL and size (in key order): a store's fingerprint."""
    for s in sorted(summaries, key=lambda s: s.key):
        h.update(f"{s.key.label} {s.url} {s.size}\n".encode())
    return h.hexdigest()[:32]
