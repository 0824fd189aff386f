"""Kinds of target, each implementing :class:`~forge.engine.targets.base.Target` once, found by format
(and, where a copy and references share one, by what the run writes or what the store holds)."""

from __future__ import annotations

from forge.engine.targets.base import CopyTarget, NoHistory, Target, Work
from forge.engine.targets.icechunk_target import IcechunkTarget
from forge.engine.targets.references import (
    IcechunkReferences,
    KerchunkJSON,
    KerchunkParquet,
    ReferenceTarget,
)
from forge.engine.targets.zarr_target import ZarrTarget

__all__ = [
    "CopyTarget",
    "NoHistory",
    "ReferenceTarget",
    "Target",
    "Work",
    "copy_at",
    "references_at",
    "target_at",
    "target_found",
]

KINDS: tuple[type[Target], ...] = (
    ZarrTarget,
    IcechunkTarget,
    IcechunkReferences,
    KerchunkJSON,
    KerchunkParquet,
)


def _kind(target_format: str, references: bool) -> type[Target]:
    for kind in KINDS:
        if kind.format == target_format and kind.references == references:
            return kind
    formats = sorted({k.format for k in KINDS if k.references == references})
    what = "references" if references else "a copy"
    raise ValueError(f"no target format {target_format!r} for {what}: one of {', '.join(formats)}")


def target_at(url: str, target_format: str, references: bool = False) -> Target:
    """The target at ``url`` of the kind ``target_format`` names: a copy, or ``references``."""
    return _kind(target_format, references)(url)


def copy_at(url: str, target_format: str) -> CopyTarget:
    """Where a copying run (an XarrayZarrRecipe's) writes."""
    target = _kind(target_format, False)(url)
    assert isinstance(target, CopyTarget)
    return target


def references_at(url: str, target_format: str | None = None) -> ReferenceTarget:
    """Where a reference run writes (``target_format``; default: the URL's suffix, as runs name them)."""
    target = _kind(target_format or url.rstrip("/").rsplit(".", 1)[-1], True)(url)
    assert isinstance(target, ReferenceTarget)
    return target


def target_found(url: str, target_format: str) -> Target:
    """What is published at ``url`` in ``target_format``: the kind whose store it is (an Icechunk
    repository of references, or of a copy)."""
    kinds = [kind(url) for kind in KINDS if kind.format == target_format]
    if not kinds:
        raise ValueError(f"no target format {target_format!r}: one of {', '.join(k.format for k in KINDS)}")
    return next((t for t in kinds if t.is_here()), kinds[0])
