import numpy as np
import pandas as pd
import pytest
import xarray as xr

from forge.io.openers import InputError, open_input


def _dataset() -> xr.Dataset:
    return xr.Dataset(
        {"sst": (("time", "lat"), np.arange(6, dtype="float32").reshape(2, 3), {"units": "degC"})},
        coords={"time": pd.date_range("2000-01-01", periods=2), "lat": [0.0, 1.0, 2.0]},
    )


@pytest.mark.parametrize("file_type", ["netcdf4", "hdf5"])
def test_a_netcdf4_file_opens_as_either_of_its_file_types(tmp_path, file_type):
    path = tmp_path / "in.nc"
    _dataset().to_netcdf(path, engine="netcdf4")
    with open_input(path, file_type, "in.nc") as ds:
        xr.testing.assert_identical(ds.load(), _dataset())


def test_a_netcdf3_file_is_not_taken_for_hdf5(tmp_path):
    path = tmp_path / "in.nc"
    _dataset().to_netcdf(path, engine="scipy")
    with pytest.raises(InputError, match=r"in\.nc.*hdf5"):
        open_input(path, "hdf5", "in.nc")
