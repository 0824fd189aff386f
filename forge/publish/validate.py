"""Checks on the data about to be published, run before it is: pure functions of values and attributes.

- the concat coordinate increases strictly, and a regular series has no gap (:func:`check_coordinate`);
- packed values respect the CF ``valid_min`` / ``valid_max`` / ``valid_range`` their source declares,
  and no step misses more than a recipe allows (``validation: max_missing_fraction`` in meta.yaml):
  :class:`Checks`, applied to each block the store stage writes;
- a build does not publish fewer steps than are published already (:func:`check_no_retraction`).

A failure is a :class:`ValidationError` naming the check, the variable, the step and the count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forge.errors import ForgeError


class ValidationError(ForgeError):
    """The data would be published wrong; nothing was published."""


def find_gaps(values: np.ndarray) -> list[tuple[Any, Any]]:
    """Pairs of consecutive values with a gap between them, in a series whose steps are all one step or
    whole multiples of it (a daily series missing a day). Irregular series (months) have none.

    Examples
    --------
    >>> [(int(a), int(b)) for a, b in find_gaps(np.array([1, 2, 3, 5, 6]))]
    [(3, 5)]
    >>> find_gaps(np.array([0, 31, 59, 90]))  # months: irregular, no gap to find
    []
    """
    if len(values) < 3:
        return []
    steps = np.diff(values)
    step = min(steps)
    ratios = np.array([s / step for s in steps], dtype=float)
    if not np.allclose(ratios, np.round(ratios)) or (ratios < 1).any():
        return []
    return [(values[i], values[i + 1]) for i in np.flatnonzero(np.round(ratios) > 1)]


def check_coordinate(values: np.ndarray, dim: str, where: str) -> None:
    """``values`` increase strictly, and have no gap if they are a regular series."""
    if len(values) < 2:
        return
    steps = np.diff(values)
    bad = [i for i, s in enumerate(steps) if not s > s * 0]  # also cftime dates' timedeltas
    if bad:
        i = bad[0]
        what = "appears twice" if values[i] == values[i + 1] else f"is followed by {values[i + 1]}"
        raise ValidationError(f"{where}: {dim!r} does not increase: {values[i]} {what}")
    gaps = find_gaps(values)
    if gaps:
        listed = ", ".join(f"after {a} the next is {b}" for a, b in gaps[:5])
        raise ValidationError(f"{where}: gap in {dim!r}, a regular series: {listed}")


def check_no_retraction(published: int, new: int, dim: str, where: str) -> None:
    if new < published:
        raise ValidationError(
            f"{where}: this build has {new} steps along {dim!r}, the published store {published}: a build "
            "never shortens a published dataset (build into another target, or delete the store first)"
        )


def valid_range(attrs: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The CF valid range of a variable's packed values (``valid_range`` wins over min/max)."""
    if "valid_range" in attrs:
        lo, hi = np.asarray(attrs["valid_range"]).tolist()
        return lo, hi
    lo, hi = attrs.get("valid_min"), attrs.get("valid_max")
    return (None if lo is None else np.asarray(lo).item()), (None if hi is None else np.asarray(hi).item())


@dataclass(frozen=True)
class VariableChecks:
    low: float | None = None
    high: float | None = None
    fill: Any = None  # the packed fill value: missing, not out of range
    max_missing: float | None = None  # the largest fraction of missing values in one step


@dataclass(frozen=True)
class Checks:
    """What each variable's stored (packed) values must satisfy, by variable name."""

    variables: Mapping[str, VariableChecks] = field(default_factory=dict)

    @classmethod
    def build(
        cls, variables: Sequence[tuple[str, Mapping[str, Any], Any]], max_missing: Mapping[str, float]
    ) -> Checks:
        """From each variable's (name, attrs, packed fill value) and meta.yaml's thresholds."""
        unknown = set(max_missing) - {name for name, _, _ in variables}
        if unknown:
            raise ValidationError(
                f"validation.max_missing_fraction names no variable of the store: {sorted(unknown)}"
            )
        found = {}
        for name, attrs, fill in variables:
            low, high = valid_range(attrs)
            if low is not None or high is not None or name in max_missing:
                found[name] = VariableChecks(low, high, fill, max_missing.get(name))
        return cls(found)

    def scan(self, name: str, values: np.ndarray, axis: int, labels: Sequence[Any], where: str) -> np.ndarray:
        """Check a block of ``name``'s packed values, ``labels`` naming its steps along ``axis``; returns
        the count of missing values per step, for :meth:`check_missing` once a step's blocks are all in."""
        rule = self.variables.get(name)
        if rule is None:
            return np.zeros(values.shape[axis], dtype=np.int64)
        missing = np.isnan(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
        if rule.fill is not None:
            missing |= values == rule.fill
        other = tuple(i for i in range(values.ndim) if i != axis)
        for bound, outside, word in (
            (rule.low, lambda v, b: v < b, "below valid_min"),
            (rule.high, lambda v, b: v > b, "above valid_max"),
        ):
            if bound is None:
                continue
            counts = (outside(values, bound) & ~missing).sum(axis=other)
            if counts.any():
                step = int(np.flatnonzero(counts)[0])
                raise ValidationError(
                    f"{where}: {name!r} at {labels[step]}: {int(counts[step])} values {word} ({bound}); "
                    f"{int((counts > 0).sum())} step(s) of this block affected"
                )
        return missing.sum(axis=other)

    def check_missing(
        self, name: str, missing: np.ndarray, cells: int, labels: Sequence[Any], where: str
    ) -> None:
        """Each step misses at most the recipe's fraction of ``cells`` values."""
        rule = self.variables.get(name)
        if rule is None or rule.max_missing is None:
            return
        fractions = missing / max(1, cells)
        over = np.flatnonzero(fractions > rule.max_missing)
        if len(over):
            step = int(over[0])
            raise ValidationError(
                f"{where}: {name!r} at {labels[step]}: {fractions[step]:.1%} of its values are missing, more "
                f"than the recipe's max_missing_fraction ({rule.max_missing:.1%})"
            )


HEALTH_STEPS = 90  # the newest steps whose statistics a store keeps, for its health plot
HEALTH_ATTR = "forge:health"

# One step of one variable, as the store stage saw it: (label, missing values, values, sum of the present
# packed values).
StepStats = tuple[str, int, int, float]


def step_statistics(values: np.ndarray, axis: int, fill: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per step along ``axis`` of a block of packed values: how many are missing (NaN, or ``fill``) and
    the sum of the others.

    Examples
    --------
    >>> missing, sums = step_statistics(np.array([[1, -9, 3], [4, 5, -9]]), 0, -9)
    >>> missing.tolist(), sums.tolist()
    ([1, 1], [4.0, 9.0])
    """
    other = tuple(i for i in range(values.ndim) if i != axis)
    if values.dtype.kind != "f":  # integers: no mask to build, the fill values are taken off the sum
        missing = (values == fill).sum(axis=other) if fill is not None else np.zeros(values.shape[axis], int)
        return missing, values.sum(axis=other, dtype=np.int64) - missing * int(fill or 0) + 0.0
    mask = np.isnan(values)
    if fill is not None and not np.isnan(fill):
        mask |= values == fill
    return mask.sum(axis=other), np.where(mask, 0, values).sum(axis=other, dtype=np.float64)


def health_summary(
    batches: Sequence[Mapping[str, Mapping[int, StepStats]]],
    unpack: Mapping[str, tuple[float, float]],
    previous: Mapping[str, Any] | None = None,
    keep: int = HEALTH_STEPS,
) -> dict[str, dict[str, list]]:
    """Each variable's newest ``keep`` steps: their labels, missing fraction and mean (unpacked with the
    variable's ``unpack`` = (scale_factor, add_offset)), after the steps of ``previous`` (what the store
    kept before this run appended to it).

    Examples
    --------
    >>> batch = {"sst": {1: ("d1", 1, 4, 30.0), 0: ("d0", 0, 4, 40.0)}}
    >>> health_summary([batch], {"sst": (0.1, 0.0)})["sst"]
    {'steps': ['d0', 'd1'], 'missing_fraction': [0.0, 0.25], 'mean': [1.0, 1.0]}
    """
    summary: dict[str, dict[str, list]] = {}
    names = {name for batch in batches for name in batch} | set(previous or {})
    for name in sorted(names):
        steps = sorted((pos, step) for batch in batches for pos, step in batch.get(name, {}).items())
        scale, offset = unpack.get(name, (1.0, 0.0))
        kept = dict((previous or {}).get(name) or {"steps": [], "missing_fraction": [], "mean": []})
        labels, fractions, means = list(kept["steps"]), list(kept["missing_fraction"]), list(kept["mean"])
        for _, (label, missing, cells, total) in steps:
            present = cells - missing
            labels.append(label)
            fractions.append(round(missing / max(1, cells), 6))
            means.append(float(f"{total / present * scale + offset:.6g}") if present else None)
        summary[name] = {
            "steps": labels[-keep:],
            "missing_fraction": fractions[-keep:],
            "mean": means[-keep:],
        }
    return summary
