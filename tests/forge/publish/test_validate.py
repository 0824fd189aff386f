"""The checks before publishing, on plain arrays: each refusal names the dimension or variable, the
step and the store."""

from __future__ import annotations

import numpy as np
import pytest

from forge.publish.validate import Checks, ValidationError, check_coordinate, check_no_retraction

DAYS = np.arange("2024-01-01", "2024-01-06", dtype="datetime64[D]").astype("datetime64[ns]")


def test_the_concat_coordinate_must_increase_without_a_gap():
    check_coordinate(DAYS, "time", "s.zarr")
    with pytest.raises(ValidationError, match=r"s.zarr: 'time' does not increase: .*appears twice"):
        check_coordinate(np.concatenate([DAYS[:3], DAYS[2:]]), "time", "s.zarr")
    with pytest.raises(ValidationError, match=r"s.zarr: gap in 'time'.*2024-01-03.*2024-01-05"):
        check_coordinate(np.delete(DAYS, 3), "time", "s.zarr")


def test_a_build_never_publishes_fewer_steps_than_are_published():
    check_no_retraction(10, 10, "time", "s.zarr")
    with pytest.raises(ValidationError, match="this build has 8 steps along 'time', the published store 10"):
        check_no_retraction(10, 8, "time", "s.zarr")


def test_values_outside_the_valid_range_are_refused_but_fill_values_are_missing_not_wrong():
    attrs = {"valid_min": -300, "valid_max": 4500}
    checks = Checks.build([("sst", attrs, -999)], {"sst": 0.5})
    block = np.array([[100, -999, 200], [-999, -999, 300]], dtype=np.int16)  # two steps of three cells
    missing = checks.scan("sst", block, 0, ["d0", "d1"], "s.zarr")
    assert missing.tolist() == [1, 2]
    with pytest.raises(ValidationError, match=r"'sst' at d1: 66.7% of its values are missing"):
        checks.check_missing("sst", missing, 3, ["d0", "d1"], "s.zarr")
    with pytest.raises(ValidationError, match=r"s.zarr: 'sst' at d0: 1 values above valid_max \(4500\)"):
        checks.scan("sst", np.array([[5000, 1, 2]], dtype=np.int16), 0, ["d0"], "s.zarr")


def test_a_threshold_for_a_variable_the_store_does_not_have_is_refused():
    with pytest.raises(ValidationError, match=r"names no variable of the store: \['sstt'\]"):
        Checks.build([("sst", {}, None)], {"sstt": 0.1})
