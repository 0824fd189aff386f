"""The target's schema, combined from small per-input summaries of *all* inputs (not the first file).

:func:`summarize` turns one opened input into an :class:`InputSummary` (dims, variables, dtypes, CF
encoding, attrs, the concat coordinate's values and a digest of every static variable). :func:`combine`
checks that the summaries agree and returns a :class:`Template`. Disagreements fail here, before anything
is written, with a message naming the file(s) and the variable.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import xarray as xr

from forge.engine.times import unify_time_encoding
from forge.engine.types import InputSummary, Template, VariableSpec, VariableSummary
from forge.io.openers import InputError
from forge.recipe.patterns import Key

CF_ENCODING_KEYS = ("dtype", "scale_factor", "add_offset", "_FillValue", "missing_value", "units", "calendar")


# The largest variable along the concat dimension (per input) whose values are compared across merged inputs
COMPARED_ALONG_CONCAT = 1 << 16


def _same_encoding(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a is b or (set(a) == set(b) and all(_same(a[k], b[k]) for k in a))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str | bytes) or isinstance(b, str | bytes):
        return type(a) is type(b) and a == b
    # Plain equality first: called for every attribute and encoding key of every input (16,500 inputs
    # made array_equal most of planning). NaN and arrays fall through to the thorough comparison.
    if type(a) is type(b) and not isinstance(a, np.ndarray):
        try:
            if a == b or (isinstance(a, float | np.floating) and np.isnan(a) and np.isnan(b)):
                return True
        except (TypeError, ValueError):
            pass
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
    except TypeError:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _digest(values: np.ndarray) -> str:
    arr = np.ascontiguousarray(values)
    h = hashlib.sha1(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes() if arr.dtype.kind != "O" else repr(arr.tolist()).encode())
    return h.hexdigest()


def summarize(
    ds: xr.Dataset,
    key: Key,
    url: str,
    location: str,
    size: int,
    concat_dim: str | None,
    merged: bool = False,
) -> InputSummary:
    """Summarize one (decoded, preprocessed) input. Loads only the concat coordinate and static variables,
    and, when the pattern ``merged`` inputs, the small variables along the concat dimension (to compare
    those several merged inputs repeat)."""
    if concat_dim is not None and concat_dim not in ds.dims:
        raise InputError(f"{url}: has no dimension {concat_dim!r} (dimensions: {sorted(map(str, ds.dims))})")
    variables = []
    for name, var in ds.variables.items():
        enc = {k: var.encoding[k] for k in CF_ENCODING_KEYS if k in var.encoding}
        if "dtype" in enc:
            enc["dtype"] = np.dtype(enc["dtype"])
        # No fill value in the source means none in the target (xarray would add NaN to floats).
        enc.setdefault("_FillValue", None)
        static = concat_dim not in var.dims
        variables.append(
            VariableSummary(
                name=str(name),
                dims=tuple(map(str, var.dims)),
                shape=tuple(var.shape),
                dtype=var.dtype,
                attrs=dict(var.attrs),
                encoding=enc,
                is_coord=name in ds.coords,
                digest=_digest(var.values) if static else None,
            )
        )
    concat_values = None
    if concat_dim is not None and concat_dim in ds.variables:
        concat_values = np.asarray(ds[concat_dim].values)
    concat_digests = {
        str(name): _digest(var.values)
        for name, var in ds.variables.items()
        if merged and concat_dim in var.dims and name != concat_dim and var.nbytes <= COMPARED_ALONG_CONCAT
    }
    return InputSummary(
        key=key,
        url=url,
        location=location,
        size=size,
        dims={str(k): int(v) for k, v in ds.sizes.items()},
        variables=tuple(variables),
        attrs=dict(ds.attrs),
        concat_values=concat_values,
        concat_digests=concat_digests,
    )


def share_equal_parts(summaries: Sequence[InputSummary]) -> list[InputSummary]:
    """The same summaries, with equal parts (dims, variables, attrs) shared as one object.

    Inputs of one product repeat one schema. Shared, a batch's summaries pickle it once (pickle
    memoizes objects), so they move between processes smaller and load about 4x faster, take a fraction
    of the memory, and :func:`combine` skips comparing a part with itself: for 16,500 tiny inputs,
    loading and combining the summaries took 1.7 s unshared and 0.6 s shared. Parts are never mutated,
    so sharing them is safe.
    """
    by_pickle: dict[bytes, Any] = {}
    by_id: dict[int, Any] = {}  # parts seen in this call (all alive: the summaries hold them)
    tuples: dict[tuple[int, ...], tuple[VariableSummary, ...]] = {}  # by the ids of shared members

    def shared(part: Any) -> Any:
        if (found := by_id.get(id(part))) is None:
            # Equal pickles mean equal values, NaN fill values included (== would say they differ).
            key = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
            found = by_id[id(part)] = by_pickle.setdefault(key, part)
        return found

    out = []
    for s in summaries:
        variables = tuple(shared(v) for v in s.variables)
        variables = tuples.setdefault(tuple(map(id, variables)), variables)
        dims, attrs = shared(s.dims), shared(s.attrs)
        unchanged = dims is s.dims and variables is s.variables and attrs is s.attrs
        out.append(s if unchanged else replace(s, dims=dims, variables=variables, attrs=attrs))
    return out


def _differs_along_concat(
    name: str, kept: Sequence[InputSummary], other: Sequence[InputSummary], concat_dim: str
) -> str | None:
    """Why ``name``, a variable along the concat dimension in two merged groups of inputs, cannot be
    kept once (None: it is the same in both at every position)."""
    at = {s.key[concat_dim]: s for s in kept}
    for s in other:
        first = at.get(s.key[concat_dim])
        mine, theirs = s.concat_digests.get(name), first.concat_digests.get(name) if first else None
        if mine is None or theirs is None:
            return f"variable {name!r} along {concat_dim!r} is in more than one input of a step ({s.url})"
        if mine != theirs:
            return (
                f"variable {name!r} along {concat_dim!r} is in more than one input of a step and differs: "
                f"{s.url} and {first.url}"
            )
    return None


def merge_part(key: Key, *dims: str | None) -> tuple[tuple[str, int], ...]:
    """The key's positions but along ``dims``."""
    return tuple((n, p) for n, p in key.positions if n not in dims)


def _check_same_names(ref: InputSummary, other: InputSummary) -> None:
    names, other_names = {v.name for v in ref.variables}, {v.name for v in other.variables}
    if names != other_names:
        missing, extra = sorted(names - other_names), sorted(other_names - names)
        detail = f"missing {missing}" if missing else f"unexpected {extra}"
        raise InputError(f"{other.url}: variables differ from {ref.url}: {detail}")


def _check_same_variable(
    ref: VariableSummary,
    other: VariableSummary,
    ref_url: str,
    url: str,
    concat_dim: str | None,
    stack_dim: str | None = None,
) -> None:
    if ref is other:
        return
    name = ref.name
    if ref.dims != other.dims:
        raise InputError(f"variable {name!r} has dims {other.dims} in {url} but {ref.dims} in {ref_url}")
    for dim, a, b in zip(ref.dims, ref.shape, other.shape, strict=True):
        if dim not in (concat_dim, stack_dim) and a != b:
            raise InputError(
                f"variable {name!r}: dimension {dim!r} has size {b} in {url} but {a} in {ref_url}"
            )
    if ref.dtype != other.dtype:
        raise InputError(f"variable {name!r} has dtype {other.dtype} in {url} but {ref.dtype} in {ref_url}")
    if ref.encoding.get("calendar", "standard") != other.encoding.get("calendar", "standard"):
        raise InputError(
            f"variable {name!r} uses calendar {other.encoding.get('calendar')!r} in {url} "
            f"but {ref.encoding.get('calendar')!r} in {ref_url}"
        )
    if ref.digest != other.digest and stack_dim not in ref.dims:
        raise InputError(f"static variable {name!r} has different values in {url} than in {ref_url}")


def combine(
    summaries: Sequence[InputSummary],
    concat_dim: str | None,
    *,
    preprocessed: bool = False,
    nitems_per_file: int | None = None,
    stack_dim: str | None = None,
) -> Template:
    """Check that all inputs agree and build the target's :class:`Template`. Inputs at the positions of
    a ``stack_dim`` hold the same variables, stacked along it."""
    if not summaries:
        raise InputError("the pattern has no inputs")
    ordered = sorted(share_equal_parts(summaries), key=lambda s: s.key)
    groups: dict[tuple, list[InputSummary]] = {}
    for s in ordered:
        groups.setdefault(merge_part(s.key, concat_dim), []).append(s)

    # Lengths along the concat dimension, per concat position; every merge group must agree.
    lengths: dict[int, tuple[int, str]] = {}
    for s in ordered:
        if concat_dim is None:
            break
        n = s.dims[concat_dim]
        if nitems_per_file is not None and n != nitems_per_file:
            raise InputError(
                f"{s.url}: has {n} items along {concat_dim!r}, the recipe says nitems_per_file="
                f"{nitems_per_file}"
            )
        pos = s.key[concat_dim]
        if pos in lengths and lengths[pos][0] != n:
            raise InputError(
                f"{s.url} has {n} items along {concat_dim!r} but {lengths[pos][1]} has {lengths[pos][0]}"
            )
        lengths.setdefault(pos, (n, s.url))
    length_list = tuple(lengths[p][0] for p in sorted(lengths))
    stack_list = _stack_lengths(ordered, stack_dim) if stack_dim is not None else ()

    specs: dict[str, VariableSpec] = {}
    sizes: dict[str, int] = {}
    static_digests: dict[str, tuple[str | None, str]] = {}
    first_group: dict[str, tuple] = {}  # each variable's first group of inputs
    first_of_source: dict[tuple, tuple] = {}  # each merge group's first stack position's group
    for merge_pos, members in groups.items():
        ref = members[0]
        source = merge_part(ref.key, concat_dim, stack_dim)
        for other in members[1:]:
            if other.variables is ref.variables:  # shared (share_equal_parts): nothing to compare
                continue
            _check_same_names(ref, other)
            for v in other.variables:
                _check_same_variable(ref.variable(v.name), v, ref.url, other.url, concat_dim)
        stacked_first = groups[first_of_source.setdefault(source, merge_pos)][0]
        if stacked_first.variables is not ref.variables:  # another stack position: the same variables
            _check_same_names(stacked_first, ref)
        for dim, n in ref.dims.items():
            if dim in (concat_dim, stack_dim):
                continue
            if sizes.setdefault(dim, n) != n:
                raise InputError(f"dimension {dim!r} has size {n} in {ref.url} but {sizes[dim]} elsewhere")
        for v in ref.variables:
            along = concat_dim in v.dims
            if v.name in specs and specs[v.name].source == source:
                kept = groups[first_group[v.name]]  # the same variable, at another stack position
                if v.name == concat_dim:
                    _check_same_steps(kept, members, concat_dim)
                else:
                    specs[v.name] = _stacked(specs[v.name], kept, members, concat_dim, stack_dim)
                continue
            if v.name in specs:
                if v.name == concat_dim:
                    continue
                if along and specs[v.name].along_concat:  # e.g. climatology_bounds in every merged file
                    kept = groups[first_group[v.name]]
                    if problem := _differs_along_concat(v.name, kept, members, concat_dim):
                        raise InputError(problem)
                    continue
                if along or specs[v.name].along_concat:
                    raise InputError(f"variable {v.name!r} is in more than one merged input ({ref.url})")
                if static_digests[v.name][0] != v.digest:
                    raise InputError(
                        f"static variable {v.name!r} differs between {static_digests[v.name][1]} "
                        f"and {ref.url}"
                    )
                continue
            if not along:
                static_digests[v.name] = (v.digest, ref.url)
            raw_ok = not preprocessed and all(
                m.variables is ref.variables or _same_encoding(m.variable(v.name).encoding, v.encoding)
                for m in members
            )
            whole = {concat_dim: sum(length_list), stack_dim: sum(stack_list)}
            shape = tuple(whole.get(d, n) for d, n in zip(v.dims, v.shape, strict=True))
            first_group[v.name] = merge_pos
            specs[v.name] = VariableSpec(
                v.name,
                v.dims,
                shape,
                v.dtype,
                v.attrs,
                dict(v.encoding),
                v.is_coord,
                source,
                along,
                raw_ok,
            )
    if concat_dim is not None:
        sizes[concat_dim] = sum(length_list)
    if stack_dim is not None:
        sizes[stack_dim] = sum(stack_list)

    concat_values, concat_encoding = None, {}
    if concat_dim is not None and ordered[0].concat_values is not None:
        concat_values, concat_encoding = _concat_coordinate(groups, concat_dim)
    attrs = {
        k: v
        for k, v in ordered[0].attrs.items()
        if all(s.attrs is ordered[0].attrs or (k in s.attrs and _same(s.attrs[k], v)) for s in ordered[1:])
    }
    return Template(
        concat_dim,
        length_list,
        sizes,
        tuple(specs.values()),
        attrs,
        concat_values,
        concat_encoding,
        stack_dim,
        stack_list,
    )


def _stack_lengths(ordered: Sequence[InputSummary], stack_dim: str) -> tuple[int, ...]:
    """Each stack position's length along ``stack_dim``, the same in all of its inputs."""
    found: dict[int, tuple[int, str]] = {}
    for s in ordered:
        if stack_dim not in s.dims:
            dims = sorted(s.dims)
            raise InputError(f"{s.url}: has no dimension {stack_dim!r} to stack along (dimensions: {dims})")
        j, n = s.key[stack_dim], s.dims[stack_dim]
        if found.setdefault(j, (n, s.url))[0] != n:
            raise InputError(f"{s.url} has {n} items along {stack_dim!r} but {found[j][1]} has {found[j][0]}")
    return tuple(found[j][0] for j in sorted(found))


def _check_same_steps(kept: Sequence[InputSummary], members: Sequence[InputSummary], concat_dim: str) -> None:
    """Stacked inputs hold the same steps along the concat dimension."""
    at = {s.key[concat_dim]: s for s in kept}
    for s in members:
        first = at.get(s.key[concat_dim])
        if first is not None and not np.array_equal(first.concat_values, s.concat_values):
            raise InputError(f"{s.url}: its {concat_dim!r} values differ from those of {first.url}")


def _stacked(
    spec: VariableSpec,
    kept: Sequence[InputSummary],
    members: Sequence[InputSummary],
    concat_dim: str | None,
    stack_dim: str | None,
) -> VariableSpec:
    """``spec`` once the inputs of another stack position (``members``) are checked to hold it alike:
    the same dims, dtype and calendar; static values equal unless along the stack dimension; small
    variables along the concat one equal unless along the stack one (bounds: kept once)."""
    first, ref = kept[0].variable(spec.name), members[0]
    other = ref.variable(spec.name)
    _check_same_variable(first, other, kept[0].url, ref.url, concat_dim, stack_dim)
    bounds_like = spec.along_concat and stack_dim not in spec.dims and spec.name != concat_dim
    if bounds_like and (problem := _differs_along_concat(spec.name, kept, members, concat_dim)):
        raise InputError(problem)
    same = all(
        m.variables is kept[0].variables or _same_encoding(m.variable(spec.name).encoding, first.encoding)
        for m in members
    )
    return spec if same or not spec.raw_ok else replace(spec, raw_ok=False)


def _concat_coordinate(
    groups: Mapping[tuple, list[InputSummary]], concat_dim: str
) -> tuple[np.ndarray, dict]:
    members = next(iter(groups.values()))
    values = np.concatenate([s.concat_values for s in members])
    encodings = [s.variable(concat_dim).encoding for s in members]
    calendars = {e.get("calendar", "standard") for e in encodings}
    if len(calendars) > 1:
        by_cal = {e.get("calendar", "standard"): s.url for e, s in zip(encodings, members, strict=True)}
        raise InputError(f"{concat_dim!r} calendars differ between inputs: {by_cal}")
    if len(np.unique(values)) != len(values):
        _, idx, counts = np.unique(values, return_index=True, return_counts=True)
        dup = values[idx[counts > 1][0]]
        raise InputError(f"{concat_dim!r} value {dup} appears more than once across inputs")
    if values.dtype.kind == "M" or values.dtype.kind == "O":
        enc = unify_time_encoding(values, encodings)
        return values, enc
    return values, dict(encodings[0])
