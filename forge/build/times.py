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


def _exact_units(values: np.ndarray, units: str, calendar: str, dtype: np.dtype | None) -> str | None:
    """The units xarray encodes ``values`` with (it may switch units), if decoding gives them back exactly."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # xarray warns when it switches units; we check the result
            num, used_units, _ = encode_cf_datetime(values, units, calendar, dtype)
        back = decode_cf_datetime(num, used_units, calendar)
    except (ValueError, OverflowError, TypeError):
        return None
    return used_units if np.array_equal(np.asarray(back), np.asarray(values)) else None


def unify_time_encoding(values: np.ndarray, encodings: Sequence[dict]) -> dict:
    """An encoding (units, calendar, dtype) under which all ``values`` round-trip exactly.

    ``encodings`` are the inputs' own time encodings; their calendars must already agree.
    """
    first = encodings[0]
    calendar = first.get("calendar", "standard")
    shared = all(e.get("units") == first.get("units") for e in encodings)
    if shared and first.get("units"):
        dtype = np.dtype(first["dtype"]) if first.get("dtype") else None
        if _exact_units(values, first["units"], calendar, dtype) == first["units"]:
            return {"units": first["units"], "calendar": calendar, **({"dtype": dtype} if dtype else {})}
    units = _exact_units(values, infer_datetime_units(values), calendar, np.dtype("int64"))
    if units is None:
        raise ValueError("no exact integer time encoding found for these times")
    return {"units": units, "calendar": calendar, "dtype": np.dtype("int64")}
