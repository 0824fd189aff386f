"""A time encoding that represents every input's times exactly.

The original Pangeo Forge took the encoding of the first file: hourly data written with a first file's
``days since`` integer units collapsed to days. Here the candidate encoding (what all inputs share) is
checked against *all* values by a round trip; when it is not exact, the coarsest units that are exact for
every value are inferred from all of them, stored as int64.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from xarray.coding.times import decode_cf_datetime, encode_cf_datetime, infer_datetime_units

TIME_ENCODING_KEYS = ("units", "calendar", "dtype")


def _round_trips(values: np.ndarray, units: str, calendar: str, dtype: np.dtype | None) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # xarray warns, then silently switches units: we check instead
            num, used_units, _ = encode_cf_datetime(values, units, calendar, dtype)
        if used_units != units:
            return False
        back = decode_cf_datetime(num, units, calendar)
    except (ValueError, OverflowError, TypeError):
        return False
    return bool(np.array_equal(np.asarray(back), np.asarray(values)))


def unify_time_encoding(values: np.ndarray, encodings: Sequence[dict]) -> dict:
    """An encoding (units, calendar, dtype) under which all ``values`` round-trip exactly.

    ``encodings`` are the inputs' own time encodings; their calendars must already agree.
    """
    first = encodings[0]
    calendar = first.get("calendar", "standard")
    shared = all(e.get("units") == first.get("units") for e in encodings)
    if shared and first.get("units"):
        dtype = np.dtype(first["dtype"]) if first.get("dtype") else None
        if _round_trips(values, first["units"], calendar, dtype):
            return {"units": first["units"], "calendar": calendar, **({"dtype": dtype} if dtype else {})}
    units = infer_datetime_units(values)
    if not _round_trips(values, units, calendar, np.dtype("int64")):
        raise ValueError(f"no exact integer time encoding found for these times (tried {units!r})")
    return {"units": units, "calendar": calendar, "dtype": np.dtype("int64")}
