"""Inputs that disagree fail before anything is written, naming the file(s) and the variable."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from forge.engine.schema import combine, share_equal_parts, summarize
from forge.io.openers import InputError
from forge.recipe.patterns import Key
from forge.testing import make_dataset


def summaries(datasets):
    return [
        summarize(ds, Key((("time", i),)), f"https://e.org/{i}.nc", f"k{i}", 0, "time")
        for i, ds in enumerate(datasets)
    ]


def test_consistent_inputs_combine():
    ds = make_dataset(6, packed=True)
    t = combine(summaries([ds.isel(time=slice(0, 4)), ds.isel(time=slice(4, 6))]), "time")
    assert t.lengths == (4, 2) and t.sizes["time"] == 6
    assert {v.name for v in t.concat_variables} == {"tas", "pr"}


def test_missing_variable_names_the_file():
    ds = make_dataset(4)
    with pytest.raises(InputError, match=r"https://e.org/1.nc: variables differ .* missing \['pr'\]"):
        combine(summaries([ds.isel(time=slice(0, 2)), ds.isel(time=slice(2, 4)).drop_vars("pr")]), "time")


def test_dimension_size_mismatch_names_both_files():
    a, b = make_dataset(2, nlat=3), make_dataset(2, nlat=4, start="2000-01-03")
    with pytest.raises(
        InputError, match=r"'lat' has size 4 in https://e.org/1.nc but 3 in https://e.org/0.nc"
    ):
        combine(summaries([a, b]), "time")


def test_calendar_mismatch():
    a, b = make_dataset(2), make_dataset(2, start="2000-01-03")
    a.time.encoding["calendar"] = "noleap"
    b.time.encoding["calendar"] = "standard"
    with pytest.raises(InputError, match="calendar"):
        combine(summaries([a, b]), "time")


def test_duplicate_times_are_refused():
    a = make_dataset(2)
    with pytest.raises(InputError, match="more than once"):
        combine(summaries([a, a]), "time")


def test_static_variable_must_agree():
    a, b = make_dataset(2), make_dataset(2, start="2000-01-03")
    b["lat"] = b.lat + 1
    with pytest.raises(InputError, match="'lat' has different values in https://e.org/1.nc"):
        combine(summaries([a, b]), "time")


def test_nitems_per_file_is_checked():
    ds = make_dataset(4)
    with pytest.raises(InputError, match="nitems_per_file=1"):
        combine(summaries([ds.isel(time=slice(0, 2)), ds.isel(time=slice(2, 4))]), "time", nitems_per_file=1)


def test_shared_global_attrs_only(tmp_path: Path):
    a, b = make_dataset(2), make_dataset(2, start="2000-01-03")
    a.attrs["id"], b.attrs["id"] = "file-a", "file-b"
    t = combine(summaries([a, b]), "time")
    assert "id" not in t.attrs and t.attrs["title"] == "synthetic test data"


def test_time_encoding_is_exact_for_all_inputs():
    a = make_dataset(2, freq="h")
    b = make_dataset(2, freq="h", start="2000-01-01 02:00")
    for ds in (a, b):
        ds.time.encoding.update(units="days since 2000-01-01", dtype=np.dtype("int64"))
    t = combine(summaries([a, b]), "time")
    assert t.concat_encoding["units"].startswith("hours since")
    num, _, _ = xr.coding.times.encode_cf_datetime(t.concat_values, t.concat_encoding["units"])
    assert list(num) == [0, 1, 2, 3]


def test_equal_parts_are_shared_and_different_ones_kept():
    ds = make_dataset(8)
    days = [ds.isel(time=slice(i, i + 1)) for i in range(8)]
    days[5] = days[5].assign_attrs(id="day-5")  # one input with attrs of its own
    for day in days:
        day.tas.encoding = {"_FillValue": np.float32("nan")}  # NaN != NaN, yet the same fill value
    plain = summaries(days)
    shared = share_equal_parts(plain)
    assert all(s.variables is shared[0].variables for s in shared)
    assert shared[5].attrs == {**ds.attrs, "id": "day-5"} and shared[4].attrs is shared[0].attrs
    assert [s.url for s in shared] == [s.url for s in plain]
    assert [list(s.concat_values) for s in shared] == [list(s.concat_values) for s in plain]
    # The point: a batch pickles its schema once, so it moves between processes at a fraction of the size.
    assert len(pickle.dumps(shared)) < len(pickle.dumps(plain)) / 2
    assert repr(combine(shared, "time")) == repr(combine(plain, "time"))
    assert "id" not in combine(shared, "time").attrs


def test_shared_parts_still_catch_a_different_input():
    ds = make_dataset(4)
    days = [ds.isel(time=slice(i, i + 1)) for i in range(4)]
    days[2] = days[2].assign(lat=days[2].lat + 1)
    with pytest.raises(InputError, match="'lat' has different values in https://e.org/2.nc"):
        combine(share_equal_parts(summaries(days)), "time")


def test_stacked_inputs_must_agree_on_steps_statics_and_shared_bounds():
    """Files stacked along a second ConcatDim hold the same steps, static variables and bounds; what
    differs fails naming the file."""
    base = make_dataset(2).expand_dims(member=[0], axis=1)
    base["mask"] = base.mask.isel(member=0, drop=True)
    base["time_bnds"] = (("time", "nv"), np.arange(4.0).reshape(2, 2))

    def stacked(*members):
        return [
            summarize(
                ds, Key((("time", 0), ("member", m))), f"https://e.org/{m}.nc", f"k{m}", 0, "time", True
            )
            for m, ds in enumerate(members)
        ]

    second = base.assign_coords(member=[1])
    t = combine(stacked(base, second), "time", stack_dim="member")
    assert t.stack_lengths == (1, 1) and t.sizes["member"] == 2
    assert {v.name: v.shape for v in t.concat_variables}["tas"] == (2, 2, 3, 4)
    cases = [
        (second.assign_coords(time=second.time + np.timedelta64(1, "D")), "'time' values differ"),
        (second.assign(mask=second.mask + 1), "static variable 'mask' has different values"),
        (second.assign(time_bnds=second.time_bnds + 1), "'time_bnds' along 'time' .* differs"),
        (second.isel(member=0), "has no dimension 'member' to stack along"),
        (second.drop_vars("pr"), r"variables differ from https://e.org/0.nc: missing \['pr'\]"),
    ]
    for other, problem in cases:
        with pytest.raises(InputError, match=rf"https://e.org/1.nc.*{problem}|{problem}.*https://e.org/1"):
            combine(stacked(base, other), "time", stack_dim="member")
