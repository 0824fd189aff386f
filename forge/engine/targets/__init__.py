"""Kinds of target, each implementing :class:`~forge.engine.targets.base.Target` once, found by the
run's ``target_format``."""

from __future__ import annotations

from forge.engine.targets.base import Target, Work
from forge.engine.targets.icechunk_target import IcechunkTarget
from forge.engine.targets.zarr_target import ZarrTarget

__all__ = ["Target", "Work", "target_at"]

TARGETS: dict[str, type[Target]] = {kind.format: kind for kind in (ZarrTarget, IcechunkTarget)}


def target_at(url: str, target_format: str) -> Target:
    """The target at ``url``, of the kind ``target_format`` names."""
    try:
        return TARGETS[target_format](url)
    except KeyError:
        raise ValueError(f"no target format {target_format!r}: one of {', '.join(TARGETS)}") from None
