"""``forge check``: every recipe in recipes/ passes it (against its replica), a bad meta.yaml is reported
field by field, a build that fails names its input, and the CF checks tell errors from warnings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from forge.check.cf import Findings, check_cf
from forge.check.recipe import check_recipe
from forge.recipe.loading import list_recipes
from forge.replicas.oisst import OisstReplica
from forge.replicas.server import SourceServer
from forge.testing import make_dataset, write_inputs

REPO = Path(__file__).parents[1]
# Where each recipe's sources are replicated on loopback: a new recipe brings its replica here.
REPLICAS = {"noaa-oisst": ("https://www.ncei.noaa.gov/", OisstReplica)}


@pytest.mark.parametrize("source", list_recipes(), ids=lambda s: s.recipe_id)
def test_every_recipe_passes_the_check(source, tmp_path):
    assert source.recipe_id in REPLICAS, f"{source.recipe_id}: add a replica of its sources to REPLICAS"
    prefix, replica = REPLICAS[source.recipe_id]
    with SourceServer(generate=replica(tmp_path / "replica").generate) as server:
        report = check_recipe(source.recipe_id, url_rewrites={prefix: server.url + "/"}, work=str(tmp_path))
        assert server.requests, "the pruned build read the replica"
    assert report.ok, "\n".join(report.lines())
    assert report.passed[-1] == "CF checks"


META = {
    "title": "Demo",
    "description": "A demo.",
    "provenance": {"providers": [{"name": "Us", "roles": ["producer"]}], "license": "CC-BY-4.0"},
    "maintainers": [{"name": "Me", "github": "me"}],
}
RECIPE = """
from forge import ConcatDim, FilePattern, XarrayZarrRecipe

pattern = FilePattern(lambda time: f"{source}/all_{{time:04d}}.nc", ConcatDim("time", list(range(4))))
recipe = XarrayZarrRecipe(pattern, target_chunks={{"time": 2}})
"""


def write_recipe(folder: Path, meta: object, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.py").write_text(RECIPE.format(source=source))
    (folder / "meta.yaml").write_text(yaml.safe_dump(meta))
    return folder


def forge_check(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "check", str(folder)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_a_good_recipe_passes_and_a_bad_meta_yaml_is_named_field_by_field(tmp_path, served):
    write_inputs(make_dataset(4, variables=("tas",)), Path(served.root), 1)
    good = forge_check(write_recipe(tmp_path / "good", META, served.url))
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.strip().splitlines()[-1] == "forge check good: passed (4 warnings)"
    assert "warning: CF: tas: no standard_name" in good.stdout
    assert re.search(r"warning: layout: tas: chunks of \S+ MB .*, far below a few MB", good.stdout)

    bad_meta = {
        "description": "",
        "version": 1.0,
        "provenance": {"providers": [{"name": "Us", "roles": ["baker"]}]},
        "maintainers": [],
        "bakery": {"id": "local"},
        "schedule": "daily",
    }
    bad = forge_check(write_recipe(tmp_path / "bad", bad_meta, served.url))
    assert bad.returncode == 1
    errors = [line for line in bad.stdout.splitlines() if line.startswith("error: meta.yaml")]
    fields = [line.split(":")[2].strip() for line in errors]
    assert fields == [
        "title",
        "description",
        "maintainers",
        "provenance.license",
        "provenance.providers.0.roles.0",
        "version",
        "schedule",
    ], bad.stdout
    assert "'baker' is not one of" in bad.stdout and "not a meta.yaml field" in bad.stdout
    assert 'version: 1.0 is not "MAJOR.MINOR"' in bad.stdout
    assert "skipped: the pruned build and CF checks, until meta.yaml is valid" in bad.stdout
    assert bad.stdout.strip().splitlines()[-1] == "forge check bad: failed with 7 errors (0 warnings)"


def test_a_build_that_fails_is_the_finding(tmp_path, served):
    write_inputs(make_dataset(2, variables=("tas",)), Path(served.root), 1)  # inputs 2 and 3 missing
    report = check_recipe(str(write_recipe(tmp_path / "short", META, served.url)), prune=3)
    assert not report.ok and report.passed == ["meta.yaml", "the recipe loads (4 inputs)"]
    assert (
        report.errors[0].startswith("pruned build (first 3 inputs): ") and "all_0002.nc" in report.errors[0]
    )
    assert "404" in report.errors[0]


def cf_findings(ds: xr.Dataset, tmp_path: Path) -> Findings:
    ds.to_zarr(tmp_path / "store.zarr", mode="w")
    raw = xr.open_zarr(tmp_path / "store.zarr", decode_cf=False)
    return check_cf(raw, xr.open_zarr(tmp_path / "store.zarr"))


def test_cf_checks_tell_what_is_wrong_from_what_is_missing(tmp_path):
    ds = make_dataset(3, variables=("tas",))
    ds["tas"].attrs["standard_name"] = "air_temperature"
    assert cf_findings(ds, tmp_path) == Findings([], ["mask: no units, no standard_name"])

    ds["tas"].attrs.update(standard_name="air_temprature", units="degrees Kelvin please")
    ds["pr"] = ds.tas.assign_attrs(standard_name="precipitation_flux", units="K", axis="W")
    ds["lat"] = ds.lat.copy(data=[-100.0, 0.0, 60.0])
    ds["lat"].attrs.pop("units")  # unidentified: its range is not checked
    ds["lon"] = ds.lon.copy(data=[0.0, 90.0, 45.0, 180.0])
    ds["mask"] = ds.mask.assign_attrs(standard_name="land_binary_mask", units="1")
    found = cf_findings(ds, tmp_path)
    assert sorted(found.errors) == [
        "lat: looks like the Y axis by its name, but no attribute says so "
        '(add units "degrees_north" or standard_name "latitude")',
        "lon: values neither increase nor decrease throughout",
        "pr: axis 'W' is not one of X, Y, Z, T",
        "pr: units 'K' cannot be 'precipitation_flux', whose CF units are 'kg m-2 s-1'",
        "tas: standard_name 'air_temprature' is not in the CF table (v93) "
        "(did you mean 'air_temperature' or 'fire_temperature'?)",
        "tas: units 'degrees Kelvin please' do not parse "
        '([UT_UNKNOWN] Failed to parse unit "degrees Kelvin please")',
    ]
    assert found.warnings == []

    ds = make_dataset(3, variables=("tas",))
    ds["lat"] = ds.lat.copy(data=np.array([-95.0, 0.0, 60.0], dtype="float32"))
    ds["tas"].encoding = {"dtype": "int16", "scale_factor": 0.1, "_FillValue": -32768}
    ds["tas"].attrs.update(valid_min=10, valid_max=-10)
    found = cf_findings(ds, tmp_path)
    assert sorted(found.errors) == [
        "lat: latitude from -95.0 to 60.0 (outside ±90 degrees)",
        "tas: the valid range is empty (10 > -10)",
    ]

    flags = xr.Dataset({"flag": ("x", np.zeros(2, "int8"), {"_FillValue": 300, "flag_values": [0, 1]})})
    assert check_cf(flags, flags) == Findings(
        ["flag: _FillValue 300 does not fit its type, int8"], ["flag: no long_name, no standard_name"]
    )


def test_layout_guidance_for_chunks_and_shards():
    """Compressed chunks of a few MB and shards of a few hundred MB pass; far from those, a warning."""
    from forge.check.layout import layout_warnings

    oisst = (720, 1440)
    assert layout_warnings("sst", (10, *oisst), (120, *oisst), 2, ratio=0.5) == []
    [small] = layout_warnings("sst", (10, *oisst), (10, *oisst), 2, ratio=0.5)
    assert small.startswith("sst: shards of 9.89 MB compressed (estimated), far below a few hundred MB")
    [large] = layout_warnings("sst", (3650, *oisst), None, 2)
    assert large.startswith("sst: chunks of 7.22e+03 MB raw, far above a few MB")
