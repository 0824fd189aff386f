"""CF checks of a built store, with cf-xarray and cf-units: what is wrong is an error, what is missing a
warning (real products such as NOAA's OISST carry no ``standard_name``, and are right to).

Errors: a ``standard_name`` not in the CF table, or whose units cannot convert to the table's; ``units``
that do not parse; an ``axis`` other than X, Y, Z or T; a dimension that looks like an axis by its name
but that nothing in its attributes identifies; a dimension coordinate with missing values, out of
order, or (latitude, longitude) out of range; a ``_FillValue`` or valid range that the variable's type
cannot hold.
Warnings: a data variable without ``units``, ``long_name`` or ``standard_name``; a deprecated alias of
a standard name.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import cf_units
import cf_xarray  # noqa: F401  (registers the .cf accessor)
import numpy as np
import xarray as xr
from cf_xarray.utils import parse_cf_standard_name_table

AXES = ("X", "Y", "Z", "T")
# cf-xarray identifies these from attributes; CF also identifies time by a reference in its units alone.
_ROLES = {"longitude": "X", "latitude": "Y", "vertical": "Z", "time": "T"}


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@functools.cache
def standard_names() -> tuple[dict[str, dict[str, str]], dict[str, str], str]:
    """The CF standard name table (name -> canonical units...), its aliases, and its version. The table
    ships with forge (trimmed to names, units and aliases), since nothing is fetched at run time."""
    table_file = resources.files("forge.check") / "data" / "cf-standard-name-table.xml.gz"
    with table_file.open("rb") as raw, gzip.open(raw) as xml:
        info, table, aliases = parse_cf_standard_name_table(xml)
    return table, aliases, str(info.get("version_number", "?"))


def _units(attrs: dict[str, Any]) -> str | None:
    units = attrs.get("units")
    return units if isinstance(units, str) else None


def _is_time_reference(units: str | None) -> bool:
    return bool(units) and re.search(r"\bsince\b", units) is not None


def identified_axes(raw: xr.Dataset) -> dict[str, str]:
    """Dimension coordinate -> the axis its attributes give it (cf-xarray's criteria, and CF's time units)."""
    found: dict[str, str] = {}
    for axis, names in raw.cf.axes.items():
        found.update({name: axis for name in names})
    for role, names in raw.cf.coordinates.items():
        if role in _ROLES:
            found.update({name: _ROLES[role] for name in names if name not in found})
    for name in raw.dims:
        if name in raw.variables and name not in found and _is_time_reference(_units(raw[name].attrs)):
            found[name] = "T"
    return found


def _check_standard_name(name: str, var: xr.Variable, found: Findings) -> None:
    standard = var.attrs.get("standard_name")
    if standard is None:
        return
    table, aliases, version = standard_names()
    base = str(standard).split(" ")[0]  # "air_temperature status_flag": a name and its modifier
    if base in aliases:
        found.warnings.append(f"{name}: standard_name {base!r} is an alias of {aliases[base]!r}")
        base = aliases[base]
    if base not in table:
        close = difflib.get_close_matches(base, table, n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        found.errors.append(f"{name}: standard_name {base!r} is not in the CF table (v{version}){hint}")
        return
    canonical = table[base].get("units") or ""
    units = _units(var.attrs)
    if units and canonical and " " not in str(standard) and not _is_time_reference(units):
        try:
            convertible = cf_units.Unit(units).is_convertible(cf_units.Unit(canonical))
        except ValueError:
            return  # reported as units that do not parse
        if not convertible:
            found.errors.append(
                f"{name}: units {units!r} cannot be {base!r}, whose CF units are {canonical!r}"
            )


def _check_units(name: str, var: xr.Variable, found: Findings) -> None:
    units = _units(var.attrs)
    if units is None:
        return
    try:
        unit = cf_units.Unit(units, calendar=var.attrs.get("calendar"))
    except ValueError as e:
        found.errors.append(f"{name}: units {units!r} do not parse ({str(e).strip()})")
        return
    if _is_time_reference(units) and not unit.is_time_reference():
        found.errors.append(f"{name}: units {units!r} are not a CF time reference (UNIT since DATE)")


def _check_encoding(name: str, var: xr.Variable, found: Findings) -> None:
    """The raw variable's fill value and valid range fit its type."""
    dtype = var.dtype
    if dtype.kind not in "iuf":
        return
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    fill = var.attrs.get("_FillValue", var.encoding.get("_FillValue"))
    if fill is not None and not (isinstance(fill, float) and np.isnan(fill)):
        whole = float(fill).is_integer()
        if not info.min <= float(fill) <= info.max or (dtype.kind in "iu" and not whole):
            found.errors.append(f"{name}: _FillValue {fill!r} does not fit its type, {dtype}")
    low, high = var.attrs.get("valid_min"), var.attrs.get("valid_max")
    if "valid_range" in var.attrs:
        valid = np.atleast_1d(var.attrs["valid_range"])
        if valid.size != 2:
            found.errors.append(f"{name}: valid_range must be two values, not {valid.tolist()}")
            return
        low, high = valid
    if low is not None and high is not None and float(low) > float(high):
        found.errors.append(f"{name}: the valid range is empty ({low} > {high})")


def _check_coordinate(name: str, values: np.ndarray, axis: str | None, found: Findings) -> None:
    """A dimension coordinate (decoded): complete, monotonic, and within the globe."""
    if values.size == 0:
        return
    if values.dtype.kind == "f" and np.isnan(values).any():
        found.errors.append(
            f"{name}: a dimension coordinate with {int(np.isnan(values).sum())} missing values"
        )
        return
    if values.dtype.kind in "iufM" and values.size > 1:
        steps = np.diff(values)
        if not ((steps > steps.dtype.type(0)).all() or (steps < steps.dtype.type(0)).all()):
            found.errors.append(f"{name}: values neither increase nor decrease throughout")
    if axis in ("X", "Y") and values.dtype.kind in "iuf":
        bound = 90 if axis == "Y" else 360
        if values.min() < -bound or values.max() > bound:
            what = "latitude" if axis == "Y" else "longitude"
            found.errors.append(
                f"{name}: {what} from {values.min()} to {values.max()} (outside ±{bound} degrees)"
            )


def check_cf(raw: xr.Dataset, decoded: xr.Dataset) -> Findings:
    """CF checks of a dataset: ``raw`` as stored (``decode_cf=False``), ``decoded`` as readers see it."""
    found = Findings()
    axes = identified_axes(raw)
    guessed = identified_axes(raw.copy().cf.guess_coord_axis())
    for name, var in raw.variables.items():
        _check_units(str(name), var, found)
        _check_standard_name(str(name), var, found)
        _check_encoding(str(name), var, found)
        axis_attr = var.attrs.get("axis")
        if axis_attr is not None and axis_attr not in AXES:
            found.errors.append(f"{name}: axis {axis_attr!r} is not one of X, Y, Z, T")
    for dim in raw.dims:
        if dim not in raw.variables:
            continue  # a dimension without a coordinate (bounds, vertices): nothing to identify
        if dim not in axes and dim in guessed:
            hint = {
                "X": 'units "degrees_east" or standard_name "longitude"',
                "Y": 'units "degrees_north" or standard_name "latitude"',
                "Z": 'positive "up" or "down", or axis "Z"',
                "T": 'units "days since ..." or standard_name "time"',
            }[guessed[dim]]
            axis = guessed[dim]
            found.errors.append(
                f"{dim}: looks like the {axis} axis by its name, but no attribute says so (add {hint})"
            )
        _check_coordinate(str(dim), decoded[dim].values, axes.get(str(dim)), found)
    for name, var in raw.data_vars.items():
        missing = [attr for attr in ("units", "long_name", "standard_name") if attr not in var.attrs]
        if "units" in missing and ("flag_values" in var.attrs or "flag_masks" in var.attrs):
            missing.remove("units")  # flags have no units
        if missing:
            found.warnings.append(f"{name}: no {', no '.join(missing)}")
    return found
