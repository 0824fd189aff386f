"""TerraClimate, in the shape of pangeo-forge-recipes' examples/feedstock/terraclimate.py (0.10): variables
in files of their own (a MergeDim), one file per year, and a PTransform subclass whose ``expand`` maps a
method that calls a staticmethod through ``self``."""

import apache_beam as beam
import xarray as xr
import zarr

from pangeo_forge_recipes.patterns import ConcatDim, FilePattern, MergeDim
from pangeo_forge_recipes.transforms import Indexed, OpenURLWithFSSpec, OpenWithXarray, StoreToZarr

years = list(range(2000, 2002))

variables = [
    "soil",
    "srad",
]


def make_filename(variable, time):
    return (
        "http://thredds.northwestknowledge.net:8080/thredds/fileServer/"
        f"TERRACLIMATE_ALL/data/TerraClimate_{variable}_{time}.nc"
    )


pattern = FilePattern(
    make_filename, ConcatDim(name="time", keys=years), MergeDim(name="variable", keys=variables)
)


class Munge(beam.PTransform):
    """
    Apply cleaning transformations to Datasets
    """

    @staticmethod
    def _apply_mask(key, da):
        """helper function to mask DataArrays based on a threshold value"""
        mask_opts = {
            "soil": ("lt", 32767),
            "srad": ("lt", 32767),
            "vap": ("lt", 300),
        }
        if mask_opts.get(key, None):
            op, val = mask_opts[key]
            if op == "lt":
                da = da.where(da < val)
            elif op == "neq":
                da = da.where(da != val)
        return da

    def _preproc(self, item: Indexed[xr.Dataset]) -> Indexed[xr.Dataset]:
        """custom preprocessing function for terraclimate data"""
        import xarray as xr

        index, ds = item

        fixed_attrs = {
            "title": "TerraClimate: monthly climate and climatic water balance for global land surfaces",
            "license": "No restrictions",
            "Conventions": "CF-1.6",
        }
        ds.attrs = fixed_attrs

        rename = {}

        station_influence = ds.get("station_influence", None)

        if station_influence is not None:
            ds = ds.drop_vars("station_influence")

        var = list(ds.data_vars)[0]

        rename_vars = {"PDSI": "pdsi"}

        if var in rename_vars:
            rename[var] = rename_vars[var]

        if "day" in ds.coords:
            rename["day"] = "time"

        if station_influence is not None:
            ds[f"{var}_station_influence"] = station_influence
        with xr.set_options(keep_attrs=True):
            ds[var] = self._apply_mask(var, ds[var])
        if rename:
            ds = ds.rename(rename)
        return index, ds

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | beam.Map(self._preproc)


def test_ds(store: zarr.storage.FSStore) -> zarr.storage.FSStore:
    # This fails integration test if not imported here
    # TODO: see if --setup-file option for runner fixes this
    import xarray as xr

    ds = xr.open_dataset(store, engine="zarr", chunks={})
    assert "soil" in ds.data_vars
    assert "srad" in ds.data_vars
    assert len(ds.time) == 24


recipe = (
    beam.Create(pattern.items())
    | OpenURLWithFSSpec()
    | OpenWithXarray(file_type=pattern.file_type)
    | Munge()  # Custom pre-processor
    | StoreToZarr(
        store_name="terraclimate.zarr",
        combine_dims=pattern.combine_dim_keys,
        target_chunks={"lat": 1024, "lon": 1024, "time": 12},
    )
    | "Test dataset" >> beam.Map(test_ds)
)
