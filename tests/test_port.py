"""``forge port``: pangeo-forge-recipes recipes (0.9 and a 0.10 feedstock of three recipes, with their
real NCEI URLs) rewritten, then built against the loopback replica of NCEI's server: each store equals
its sources, the recipes' own checks run before publishing, and a module's import-time code runs once
per run."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr
import zarr

from forge import XarrayZarrRecipe
from forge.engine.stages import run_spec_for
from forge.errors import RecipeCodeError
from forge.port.feedstock import port_path
from forge.port.rewrite import port_source
from forge.recipe.loading import load_recipe
from forge.replicas.server import SourceServer
from forge.run import run_locally
from forge.testing import assert_same_dataset, forge_cli, forge_run_on_replica, open_sources, open_store

ORIGINALS = Path(__file__).parent / "data" / "pangeo_forge"
NCEI = "https://www.ncei.noaa.gov/"


def build(ref: str, tmp_path: Path, server: SourceServer, prune: int) -> str:
    """The recipe ``ref`` built by the local runner from the replica; the store's URL."""
    rewrites = {NCEI: server.url + "/"}
    run = run_spec_for(ref, str(tmp_path / "target"), str(tmp_path / "cache"), prune, rewrites)
    return run_locally(load_recipe(ref), run)["url"]


def sources(server: SourceServer) -> xr.Dataset:
    return open_sources(sorted(server.files.directory.rglob("*.nc")))


def test_a_09_recipe_ports_and_builds_what_its_sources_hold(tmp_path, replica):
    [ported] = port_path(ORIGINALS / "oisst-0.9" / "recipe.py", tmp_path / "oisst.py")
    assert [str(n) for n in ported.notes] == [
        "line 3: from pangeo_forge_recipes.patterns -> from forge import pattern_from_file_sequence",
        "line 4: from pangeo_forge_recipes.recipes -> from forge import XarrayZarrRecipe",
        "line 23: cache_inputs=: dropped (forge always caches inputs)",
        "line 23: copy_input_to_local_file=: dropped (forge reads inputs from its cache)",
        "line 23: consolidate_zarr=: dropped (forge consolidates the metadata when it publishes)",
    ]
    code = ported.written.read_text()
    assert "def drop_zlev(ds, fname):" in code and "inputs_per_chunk=2" in code  # the user's code, kept
    url = build(str(ported.written), tmp_path, replica, prune=4)
    expected = sources(replica).isel(zlev=0, drop=True)
    assert_same_dataset(open_store(url), expected)
    assert zarr.open_group(url, mode="r")["sst"].chunks[0] == 2  # inputs_per_chunk=2 of one day each


def test_a_010_feedstock_ports_and_runs_as_a_flow_importing_its_module_once(tmp_path, prefect_server):
    out = tmp_path / "feedstock"
    ported = forge_cli("port", str(ORIGINALS / "oisst-0.10"), "-o", str(out), timeout=60)
    assert ported.returncode == 0, ported.stdout + ported.stderr
    for line in (
        "line 40: beam.Map(test_ds): a check of the finished store, now in tests=[...] (it fails the run)",
        "line 36: class SSTOnly: no longer a PTransform; its steps run on every input",
        "line 49: class PassThrough: a PTransform that returns its input unchanged: removed",
        "bakery 'pangeo-ldeo-nsf-earthcube' -> 'local' (forge's bakeries: local, gcp, aws, azure)",
    ):
        assert f"  {line}\n" in ported.stdout
    first = f"{out}/noaa-oisst-beam"
    assert ported.stdout.splitlines()[-1] == (
        f"forge port: done; next `forge check {first}` and `forge run {first} --prune 2`"
    )
    assert "import apache_beam" not in (out / "oisst_vars.py").read_text()

    log = tmp_path / "imports.log"
    env = {"PREFECT_API_URL": prefect_server, "OISST_IMPORT_LOG": str(log)}
    run = forge_run_on_replica(f"{out}/noaa-oisst-beam", tmp_path, 2, env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    url = str(tmp_path / "target" / "noaa-oisst-beam.zarr")  # named after meta.yaml's id, not the file
    assert f"store: {url}" in run.stdout
    assert_same_dataset(open_store(url), open_sources(sorted((tmp_path / "replica").rglob("*.nc"))))
    assert zarr.open_group(url, mode="r")["sst"].chunks[0] == 2
    # Once, in the process that planned the run: the workers got the recipe without importing it.
    assert len(log.read_text().splitlines()) == 1


def test_a_feedstocks_other_recipes_build_their_own_variables(tmp_path, replica):
    port_path(ORIGINALS / "oisst-0.10", tmp_path / "feedstock")
    chunks = {"sst": (2, 36, 72), "ice": (2, 18, 72)}  # target_chunks; ice's from its dynamic_chunking_fn
    for recipe_id, variable in (("noaa-oisst-sst", "sst"), ("noaa-oisst-ice", "ice")):
        url = build(str(tmp_path / "feedstock" / recipe_id), tmp_path, replica, prune=3)
        assert url.endswith(f"{recipe_id}.zarr")
        expected = sources(replica)[[variable]].isel(zlev=0, drop=True)
        assert_same_dataset(open_store(url), expected)
        assert zarr.open_group(url, mode="r")[variable].chunks == chunks[variable]


@pytest.mark.parametrize("target_format", ["zarr", "icechunk"])
def test_a_check_that_fails_fails_the_run_and_publishes_nothing(tmp_path, replica, target_format):
    port_path(ORIGINALS / "oisst-0.10", tmp_path / "feedstock")
    module = tmp_path / "feedstock" / "noaa_oisst.py"
    text = module.read_text().replace('"ice", "sst"]', '"ice", "sst", "sea_ice"]')  # a check that fails
    text += f"\nimport dataclasses\n\nrecipe = dataclasses.replace(recipe, target_format={target_format!r})\n"
    module.write_text(text)
    with pytest.raises(
        RecipeCodeError, match=r"the check test_ds of .*noaa-oisst-beam.* raised AssertionError"
    ):
        build(str(tmp_path / "feedstock" / "noaa-oisst-beam"), tmp_path, replica, prune=2)
    store = tmp_path / "target" / f"noaa-oisst-beam.{target_format}"
    assert store.exists()  # written, not published:
    if target_format == "zarr":
        assert "forge:complete" not in zarr.open_group(str(store), mode="r").attrs
    else:
        from forge.publish.icechunk import history

        assert history(str(store)) == []  # main holds no build
    assert not (tmp_path / "target" / "catalog.json").exists()


def test_module_style_imports_and_09_methods_port():
    """``from pangeo_forge_recipes import patterns`` (then ``patterns.ConcatDim``) and 0.9's
    ``recipe.copy_pruned()`` and ``target_chunks`` of -1, as real recipes use them."""
    ported = port_source(
        "from pangeo_forge_recipes import patterns, recipes\n\n"
        "def url(time):\n    return f'https://example.org/{time}.nc'\n\n"
        "pattern = patterns.FilePattern(url, patterns.ConcatDim('time', [1, 2, 3], nitems_per_file=1))\n"
        "recipe = recipes.XarrayZarrRecipe(pattern, target_chunks={'time': -1})\n"
        "test_recipe = recipe.copy_pruned()\n"
    )
    assert (
        "line 1: from pangeo_forge_recipes import patterns, recipes -> import forge as patterns, forge as "
        "recipes" in map(str, ported.notes)
    )
    namespace: dict = {}
    exec(compile(ported.code, "recipe.py", "exec"), namespace)
    assert isinstance(namespace["recipe"], XarrayZarrRecipe) and len(namespace["test_recipe"].pattern) == 2


BEAM_CLASSES = """
import apache_beam as beam
from pangeo_forge_recipes.patterns import ConcatDim, FilePattern
from pangeo_forge_recipes.transforms import OpenURLWithFSSpec, OpenWithXarray, StoreToZarr

pattern = FilePattern(lambda time: f"https://example.org/{time}.nc", ConcatDim("time", [1, 2]))


def shift(item, by, scale=1):
    index, ds = item
    return index, (ds + by) * scale


def add(index, ds, amount):
    return index, ds + amount


class Static(beam.PTransform):
    @staticmethod
    def _double(item):
        index, ds = item
        return index, ds * 2

    def expand(self, pcoll):
        return pcoll | beam.Map(self._double)


class Configured(beam.PTransform):
    def __init__(self, limit, label=None):
        super().__init__(label)
        self.limit = limit

    @staticmethod
    def _mask(ds, limit):
        return ds.where(ds < limit)

    def _preproc(self, item):
        index, ds = item
        return index, self._mask(ds, self.limit)

    def expand(self, pcoll):
        return pcoll | beam.Map(self._preproc) | beam.Map(shift, self.limit, scale=10)


recipe = (
    beam.Create(pattern.items())
    | OpenURLWithFSSpec()
    | OpenWithXarray(file_type=pattern.file_type)
    | Static()
    | Configured(limit=6)
    | beam.MapTuple(add, 0.5)
    | StoreToZarr(store_name="x.zarr", combine_dims=pattern.combine_dim_keys)
)
"""


def test_beam_transform_classes_port_with_their_methods_state_and_extra_arguments():
    """A staticmethod, a method using what ``__init__`` set (and calling a staticmethod through
    ``self``), ``beam.Map``/``beam.MapTuple`` with extra arguments: each step runs as Beam would."""
    ported = port_source(BEAM_CLASSES)
    assert [n for n in ported.notes if not n.translated] == []
    namespace: dict = {}
    exec(compile(ported.code, "recipe.py", "exec"), namespace)
    ds = xr.Dataset({"a": ("x", [1.0, 2.0, 3.0, 4.0])})
    processed = namespace["recipe"].process_input(ds)
    doubled = ds * 2
    expected = ((doubled.where(doubled < 6) + 6) * 10) + 0.5
    xr.testing.assert_identical(processed, expected)
