"""Time coordinates: one encode/decode path, and an encoding that represents every input's times exactly.

The original Pangeo Forge took the encoding of the first file: hourly data written with a first file's
``days since`` integer units collapsed to days. Here the inputs' shared encoding (units, calendar and
dtype, e.g. OISST's float32 ``days since 1978-01-01 12:00:00``) is kept when it holds *all* values
exactly, checked by a round trip; otherwise the coarsest units that are exact for every value are
inferred from all of them, stored as int64.

``months since`` and ``years since`` units are real in climatologies. They have a fixed length only in
the 360_day calendar, where xarray decodes them (to cftime dates) but cannot encode them; cftime does
both, so these go through cftime here.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import cftime
import numpy as np
from xarray.coding.times import decode_cf_datetime, encode_cf_datetime, infer_datetime_units

_CALENDAR_UNITS = re.compile(r"^\s*(months?|years?)\s+since\s", re.IGNORECASE)


def is_time_units(units: object) -> bool:
    """Whether ``units`` are CF time units ("<unit> since <date>")."""
    return isinstance(units, str) and " since " in units


def calendar_units(units: str) -> bool:
    """``months since`` / ``years since``: lengths that only the 360_day calendar fixes."""
    return bool(_CALENDAR_UNITS.match(units))


def encode_times(
    values: np.ndarray, units: str, calendar: str, dtype: np.dtype | None = None
) -> tuple[np.ndarray, str]:
    """``values`` (datetime64 or cftime dates) as numbers in ``units``; also the units xarray used (it
    may switch to finer ones when ``units`` cannot hold the values)."""
    if calendar_units(units):
        num = np.asarray(cftime.date2num(np.asarray(values).tolist(), units, calendar))
        return (num.astype(dtype) if dtype is not None else num), units
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xarray warns when it switches units; callers check the result
        num, used_units, _ = encode_cf_datetime(values, units, calendar, dtype)
    return np.asarray(num), used_units


def decode_times(num: np.ndarray, units: str, calendar: str) -> np.ndarray:
    if calendar_units(units):
        return np.asarray(cftime.num2date(np.asarray(num).tolist(), units, calendar))
    return np.asarray(decode_cf_datetime(num, units, calendar))


def exact_encoding(
    values: np.ndarray, units: str, calendar: str, dtype: np.dtype | None
) -> np.ndarray | None:
    """The numbers that store ``values`` in ``units`` as ``dtype``, if they decode back to exactly
    ``values``; None otherwise."""
    try:
        num, _ = encode_times(values, units, calendar, dtype)
        if dtype is not None:
            num = num.astype(dtype)
        back = decode_times(num, units, calendar)
    except (ValueError, OverflowError, TypeError, KeyError):
        return None
    return num if np.array_equal(np.asarray(back), np.asarray(values)) else None


def unify_time_encoding(values: np.ndarray, encodings: Sequence[dict]) -> dict:
    """An encoding (units, calendar, dtype) under which all ``values`` round-trip exactly.

    ``encodings`` are the inputs' own time encodings; their calendars must already agree. When every
    input shares its units and dtype and they hold every value, they are kept as the source has them.
    """
    first = encodings[0]
    calendar = first.get("calendar", "standard")
    units, dtype = first.get("units"), first.get("dtype")
    shared = all(e.get("units") == units and e.get("dtype") == dtype for e in encodings)
    if shared and units:
        dtype = np.dtype(dtype) if dtype else None
        if exact_encoding(values, units, calendar, dtype) is not None:
            return {"units": units, "calendar": calendar, **({"dtype": dtype} if dtype else {})}
    if any(calendar_units(e.get("units") or "") for e in encodings):
        raise ValueError(
            f"the inputs' time units differ ({sorted({e.get('units') for e in encodings})}) and some are "
            "months or years: they cannot be brought to one exact encoding"
        )
    inferred = infer_datetime_units(values)
    num = exact_encoding(values, inferred, calendar, np.dtype("int64"))
    if num is None:
        raise ValueError("no exact integer time encoding found for these times")
    return {"units": inferred, "calendar": calendar, "dtype": np.dtype("int64")}


def value_text(value: Any) -> str:
    """A coordinate's value for people: a day as 2026-11-14, a time to the second, the rest as it prints."""
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="s")).removesuffix("T00:00:00")
    return str(value)
