"""The STAC catalog a run writes, and versions: built at 1.0, appended, bumped to 1.1, bumped to 2.0, the
catalog read back with pystac and validated against the STAC 1.1, datacube and version JSON Schemas."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jsonschema
import matplotlib.colors
import matplotlib.image
import numpy as np
import pandas as pd
import pystac
import pytest
import referencing
import xarray as xr
import yaml
from pystac.extensions.datacube import DatacubeExtension
from pystac.extensions.version import VersionExtension

import forge
import forge.catalog.catalog as catalog_module
from forge.catalog.catalog import CATALOG, listing, write_root
from forge.catalog.pictures import MISSING_COLOUR
from forge.engine.stages import run_spec_for
from forge.engine.types import RunSpec
from forge.recipe.loading import load_recipe
from forge.recipe.meta import version_of
from forge.replicas.oisst import OisstReplica
from forge.replicas.server import SourceServer
from forge.run import run_locally
from forge.testing import make_dataset, open_store, write_inputs
from tests.browser import inspected

REPO = Path(__file__).parents[1]
SCHEMAS = Path(__file__).parent / "data" / "stac"
STAC = "https://schemas.stacspec.org/v1.1.0"


def stac_registry() -> referencing.Registry:
    """The committed schemas, under their $ids and the URIs the STAC schemas' relative refs make."""
    resources = []
    for path in SCHEMAS.rglob("*.json"):
        schema = json.loads(path.read_text())
        resource = referencing.Resource.from_contents(schema, referencing.jsonschema.DRAFT7)
        uris = {schema["$id"].rstrip("#")}
        if path.parent.name == "v1.1.0":
            spec = {"catalog.json": "catalog-spec", "collection.json": "collection-spec"}.get(
                path.name, "item-spec"
            )
            uris.add(f"{STAC}/{spec}/json-schema/{path.name}")
        resources += [(uri, resource) for uri in uris]
    # PROJJSON stands for a reference system given as an object; the catalog gives EPSG codes.
    projjson = referencing.Resource.from_contents({"type": "object"}, referencing.jsonschema.DRAFT7)
    resources.append(("https://proj.org/schemas/v0.4/projjson.schema.json", projjson))
    return referencing.Registry().with_resources(resources)


def assert_valid_stac(doc: dict) -> None:
    """``doc`` validates against its type's STAC 1.1 schema and each extension schema it declares."""
    core = {
        "Catalog": "catalog-spec/json-schema/catalog.json",
        "Collection": "collection-spec/json-schema/collection.json",
    }
    uri = f"{STAC}/{core.get(doc['type'], 'item-spec/json-schema/item.json')}"
    registry = stac_registry()
    for schema_uri in [uri, *doc.get("stac_extensions", [])]:
        schema = registry.contents(schema_uri)
        jsonschema.Draft7Validator(schema, registry=registry).validate(doc)


RECIPE = """
from forge import ConcatDim, FilePattern, XarrayZarrRecipe

def url(time):
    return f"{source}/all_{{time:04d}}.nc"

pattern = FilePattern(url, ConcatDim("time", list(range({days})), nitems_per_file=1))
recipe = XarrayZarrRecipe(pattern, target_chunks={{"time": 3}})
"""
META = {
    "title": "Synthetic temperature and precipitation",
    "description": "A small CF dataset for the catalog's tests.",
    "keywords": ["temperature", "precipitation"],
    "provenance": {
        "providers": [{"name": "Forge tests", "roles": ["producer", "host"], "url": "https://example.org"}],
        "license": "CC-BY-4.0",
    },
    "maintainers": [{"name": "Forge maintainers", "github": "forge-recipes"}],
}


def global_dataset(n: int) -> xr.Dataset:
    """Daily, on a 0..360 global grid, with CF axes as OISST has them."""
    ds = make_dataset(n, nlat=4, nlon=8)
    ds = ds.assign_coords(
        lat=("lat", np.linspace(-67.5, 67.5, 4, dtype="float32"), {"units": "degrees_north"})
    )
    ds = ds.assign_coords(lon=("lon", np.arange(22.5, 360, 45, dtype="float32"), {"units": "degrees_east"}))
    return ds


def run(
    recipe_dir: Path, tmp_path: Path, days: int, version: str | None, append: bool = False, fmt: str = "zarr"
) -> dict:
    """The recipe at ``days`` days and meta.yaml ``version``, built (or appended) by the local runner."""
    (recipe_dir / "recipe.py").write_text(RECIPE.format(source=recipe_dir.parent / "src", days=days))
    meta = dict(META, **({"version": version} if version else {}))
    (recipe_dir / "meta.yaml").write_text(yaml.safe_dump(meta))
    spec = RunSpec(
        str(recipe_dir),
        "demo",
        str(tmp_path / "target"),
        str(tmp_path / "cache"),
        version=version_of(meta),
        target_format=fmt,
    )
    return run_locally(load_recipe(str(recipe_dir)), spec, append=append)


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    write_inputs(global_dataset(20), tmp_path / "src", 1)
    (tmp_path / "demo").mkdir()
    return tmp_path / "demo"


def read_back(tmp_path: Path) -> tuple[pystac.Catalog, pystac.Collection]:
    catalog = pystac.read_file(str(tmp_path / "target" / CATALOG))
    [collection] = list(catalog.get_children())
    target = tmp_path / "target"
    for path in [target / CATALOG, *target.glob("*/collection.json"), *target.glob("*/*-v*.json")]:
        assert_valid_stac(json.loads(path.read_text()))
    return catalog, collection


def check_against_store(collection: pystac.Collection | pystac.Item, store: xr.Dataset) -> None:
    cube = DatacubeExtension.ext(collection)
    time = cube.dimensions["time"]
    assert time.extent == [
        f"{pd.Timestamp(store.time.values[0]):%Y-%m-%dT%H:%M:%SZ}",
        f"{pd.Timestamp(store.time.values[-1]):%Y-%m-%dT%H:%M:%SZ}",
    ]
    assert time.step == "P1D"
    assert cube.dimensions["lon"].properties == {
        "type": "spatial",
        "axis": "x",
        "extent": [22.5, 337.5],
        "step": 45.0,
        "reference_system": 4326,
    }
    assert cube.dimensions["lat"].properties["axis"] == "y"
    tas = cube.variables["tas"].properties
    assert tas == {
        "dimensions": ["time", "lat", "lon"],
        "type": "data",
        "unit": "K",
        "description": "synthetic tas",
    }
    assert cube.variables["mask"].properties["dimensions"] == ["lat", "lon"]


@pytest.mark.filterwarnings("ignore:The item 'demo-v1' is deprecated")
def test_a_catalog_follows_the_dataset_through_appends_and_versions(recipe_dir, tmp_path):
    target = tmp_path / "target"
    run(recipe_dir, tmp_path, 10, "1.0")
    assert (target / "demo" / "v1.zarr").is_dir()  # one store per major version
    _, collection = read_back(tmp_path)
    assert collection.id == "demo" and collection.title == META["title"] and collection.license == "CC-BY-4.0"
    assert collection.keywords == META["keywords"] and collection.providers[0].name == "Forge tests"
    assert collection.extent.spatial.bboxes == [[-180.0, -67.5, 180.0, 67.5]]  # 0..360, the globe
    interval = collection.extent.temporal.intervals[0]
    assert [t.strftime("%Y-%m-%d") for t in interval] == ["2000-01-01", "2000-01-10"]
    check_against_store(collection, open_store(str(target / "demo" / "v1.zarr")))
    asset = collection.assets["zarr"]
    assert (
        asset.media_type == "application/vnd+zarr" and asset.roles == ["data"] and asset.href == "./v1.zarr"
    )
    assert asset.extra_fields["zarr:zarr_format"] == 3 and asset.extra_fields["xarray:open_kwargs"] == {
        "consolidated": True
    }
    assert VersionExtension.ext(collection).version == "1.0"
    assert (
        collection.extra_fields["forge:fingerprint"]
        and collection.extra_fields["forge:version"] == forge.__version__
    )
    assert {link.rel for link in collection.links} >= {"via", "describedby", "item", "root", "parent"}

    run(recipe_dir, tmp_path, 14, "1.0", append=True)  # an append: same version, longer extent
    _, collection = read_back(tmp_path)
    assert VersionExtension.ext(collection).version == "1.0"
    assert collection.extent.temporal.intervals[0][1].strftime("%Y-%m-%d") == "2000-01-14"

    run(recipe_dir, tmp_path, 14, "1.1")  # a minor bump: rebuilt into its major's store
    _, collection = read_back(tmp_path)
    assert VersionExtension.ext(collection).version == "1.1"
    assert sorted(p.name for p in (target / "demo").iterdir() if "zarr" in p.name) == ["v1.zarr"]

    run(recipe_dir, tmp_path, 18, "2.0")  # a major bump: a new store, the old one kept
    _, collection = read_back(tmp_path)
    assert VersionExtension.ext(collection).version == "2.0" and collection.assets["zarr"].href == "./v2.zarr"
    items = {item.id: item for item in collection.get_items()}
    v1, v2 = items["demo-v1"], items["demo-v2"]
    assert VersionExtension.ext(v1).version == "1.1" and VersionExtension.ext(v1).deprecated is True
    assert VersionExtension.ext(v2).version == "2.0" and VersionExtension.ext(v2).deprecated is False
    assert v1.get_single_link("successor-version").href.endswith("demo-v2.json")
    assert v2.get_single_link("predecessor-version").href.endswith("demo-v1.json")
    assert v1.get_single_link("latest-version").href.endswith("demo-v2.json")
    check_against_store(v1, open_store(str(target / "demo" / "v1.zarr")))
    check_against_store(v2, open_store(str(target / "demo" / "v2.zarr")))

    # Opening through the catalog: the latest, a major, a major.minor.
    latest = forge.open_dataset("demo", catalog=str(target))
    assert latest.sizes["time"] == 18 and latest.attrs["forge:dataset_version"] == "2.0"
    assert forge.open_dataset("demo", catalog=str(target), version="1").sizes["time"] == 14
    assert forge.open_dataset("demo", catalog=str(target / CATALOG), version="2.0").sizes["time"] == 18
    with pytest.raises(LookupError, match="version 1.0 is not published: major 1 holds 1.1"):
        forge.open_dataset("demo", catalog=str(target), version="1.0")
    xr.testing.assert_identical(
        forge.open_dataset("demo", catalog=str(target), version="1").load(),
        xr.open_zarr(target / "demo" / "v1.zarr").load(),
    )


def test_an_unversioned_recipe_keeps_its_path_and_an_icechunk_store_is_opened_through_main(
    recipe_dir, tmp_path
):
    target = tmp_path / "target"
    run(recipe_dir, tmp_path, 6, None)
    assert (target / "demo.zarr").is_dir()
    _, collection = read_back(tmp_path)
    assert collection.assets["zarr"].href == "../demo.zarr" and not list(collection.get_items())
    assert forge.open_dataset("demo", catalog=str(target)).sizes["time"] == 6

    shutil.rmtree(target)
    run(recipe_dir, tmp_path, 6, "1.0", fmt="icechunk")
    run(recipe_dir, tmp_path, 9, "1.0", append=True, fmt="icechunk")
    _, collection = read_back(tmp_path)
    asset = collection.assets["zarr"]
    assert asset.href == "./v1.icechunk" and asset.extra_fields["icechunk:branch"] == "main"
    assert asset.extra_fields["forge:format"] == "icechunk"
    opened = forge.open_dataset("demo", catalog=str(target), version="1").load()
    xr.testing.assert_identical(
        opened, open_store(str(target / "demo" / "v1.icechunk")).assign_attrs(opened.attrs)
    )
    assert opened.sizes["time"] == 9 and collection.extent.temporal.intervals[0][1].day == 9
    check_against_store(collection, opened)


def test_recipes_finishing_together_never_lose_a_link(tmp_path):
    """Each writes its collection, then the root from a listing, until the listing agrees."""
    root = tmp_path / "target"

    def finish(i: int) -> None:
        (root / f"r{i}").mkdir(parents=True)
        (root / f"r{i}" / "collection.json").write_text("{}")
        write_root(str(root))

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    links = json.loads((root / CATALOG).read_text())["links"]
    assert sorted(link["href"] for link in links if link["rel"] == "child") == [
        f"./r{i}/collection.json" for i in range(8)
    ]


def test_recipe_text_is_not_needed_in_the_catalog_of_a_recipe_object(tmp_path, served):
    """The local runner given a recipe object (no file): the catalog still describes its store."""
    from forge import ConcatDim, FilePattern, XarrayZarrRecipe

    write_inputs(global_dataset(4), Path(served.root), 1)
    pattern = FilePattern(lambda time: f"{served.url}/all_{time:04d}.nc", ConcatDim("time", list(range(4))))
    out = run_locally(
        XarrayZarrRecipe(pattern), RunSpec("anything", "obj", str(tmp_path / "t"), str(tmp_path / "c"))
    )
    doc = json.loads((tmp_path / "t" / "obj" / "collection.json").read_text())
    assert (
        doc["id"] == "obj"
        and doc["assets"]["zarr"]["href"] == "../obj.zarr"
        and out["catalog"].endswith(CATALOG)
    )
    assert textwrap.dedent(doc["description"]) == "obj"


PAGE_SCRIPT = """({
  text: document.body.innerText,
  images: [...document.images].map(i => [i.getAttribute("src"), i.alt, i.naturalWidth, i.naturalHeight]),
  snippets: [...document.querySelectorAll("pre code")].map(c => c.textContent),
})"""


@pytest.mark.filterwarnings("ignore:The item 'demo-v1' is deprecated")
def test_the_catalog_page_shows_every_dataset_its_pictures_and_snippets_that_open_it(recipe_dir, tmp_path):
    """Two recipes (one bumped to a new major, one the OISST replica on Icechunk, appended), served by
    ``forge catalog --serve`` and looked at in headless Chromium."""
    target = tmp_path / "target"
    run(recipe_dir, tmp_path, 10, "1.0")
    run(recipe_dir, tmp_path, 14, "2.0")
    with SourceServer(generate=OisstReplica(tmp_path / "replica", nlat=90, nlon=180).generate) as server:
        for days, append in ((3, False), (5, True)):
            spec = run_spec_for(
                "noaa-oisst",
                str(target),
                str(tmp_path / "cache"),
                prune=days,
                url_rewrites={"https://www.ncei.noaa.gov/": server.url + "/"},
                target_format="icechunk",
            )
            run_locally(load_recipe("noaa-oisst"), spec, append=append)
    sst = open_store(str(target / "noaa-oisst.icechunk"))

    # The statistics the store stage kept, across the build and the append: each step's mean and
    # missing fraction of the published values.
    health = forge.open_dataset("noaa-oisst", catalog=str(target)).attrs["forge:health"]["sst"]
    assert health["steps"] == [f"1981-09-0{d}T12:00:00" for d in range(1, 6)]
    np.testing.assert_allclose(health["mean"], sst.sst.mean(["zlev", "lat", "lon"]).values, rtol=1e-4)
    missing = sst.sst.isnull().mean(["zlev", "lat", "lon"]).values
    np.testing.assert_allclose(health["missing_fraction"], missing, atol=1e-6)

    for path in target.glob("*/collection.json"):
        doc = json.loads(path.read_text())
        assert_valid_stac(doc)
        thumbnail = doc["assets"]["thumbnail"]
        assert thumbnail["roles"] == ["thumbnail"] and thumbnail["type"] == "image/png"
        assert (path.parent / thumbnail["href"]).is_file() and thumbnail["description"]
    # The OISST map: land (missing values) in grey, sea coloured.
    quicklook = matplotlib.image.imread(target / "noaa-oisst" / "quicklook.png")[..., :3]
    grey = np.all(np.abs(quicklook - matplotlib.colors.to_rgb(MISSING_COLOUR)) < 0.01, axis=-1)
    assert grey.mean() > 0.02

    serving = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "catalog",
            "--serve",
            "--port",
            "0",
            "--target-root",
            str(target),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = serving.stdout.readline()
        address = re.search(r"http://127\.0\.0\.1:\d+/index\.html", line)
        assert address, line
        page = inspected(address.group(0), PAGE_SCRIPT, screenshot=tmp_path / "catalog-page.png")
    finally:
        serving.terminate()
        serving.wait(timeout=30)
    assert page.errors == []
    text = page.value["text"]
    assert META["title"] in text and "NOAA Optimum Interpolation SST v2.1" in text
    assert "1.0 (deprecated), 2.0 (latest)" in text and "CC-BY-4.0" in text and "CC0-1.0" in text
    images = page.value["images"]
    assert sorted(src for src, *_ in images) == [
        "demo/health.png",
        "demo/quicklook.png",
        "noaa-oisst/health.png",
        "noaa-oisst/quicklook.png",
    ]
    assert all(alt and width > 0 and height > 0 for _, alt, width, height in images), images
    assert (tmp_path / "catalog-page.png").stat().st_size > 10_000
    # Every snippet, run as a reader would, opens the published dataset.
    expected = {"forge:v2": open_store(str(target / "demo" / "v2.zarr")), "noaa-oisst": sst}
    opened = 0
    for code in page.value["snippets"]:
        scope: dict = {}
        exec(code, scope)  # noqa: S102 (the page's own snippets, on this test's stores)
        ds = scope["ds"].load()
        want = expected["noaa-oisst"] if "noaa-oisst" in code else expected["forge:v2"]
        xr.testing.assert_identical(ds.drop_attrs(), want.drop_attrs())
        opened += 1
    assert opened == 4


def test_a_picture_that_cannot_be_drawn_is_named_on_the_page_and_never_fails_the_run(
    recipe_dir, tmp_path, monkeypatch
):
    def broken(*args: object) -> bytes:
        raise RuntimeError("no display of that kind")

    monkeypatch.setattr(catalog_module, "quicklook_png", broken)
    out = run(recipe_dir, tmp_path, 4, None)
    target = tmp_path / "target"
    assert out["url"].endswith("demo.zarr") and not (target / "demo" / "quicklook.png").exists()
    doc = json.loads((target / "demo" / "collection.json").read_text())
    assert doc["forge:missing_pictures"] == {"thumbnail": "RuntimeError: no display of that kind"}
    assert "thumbnail" not in doc["assets"] and (target / "demo" / "health.png").is_file()
    page = (target / "index.html").read_text()
    assert "The quick-look map is missing: RuntimeError: no display of that kind" in page


def test_the_catalog_says_how_far_a_scheduled_dataset_is_behind(recipe_dir, tmp_path):
    run(recipe_dir, tmp_path, 4, None)
    meta = {**META, "update": {"schedule": {"cron": "0 6 * * *"}, "stale_after": "36h", "notify": "x/y"}}
    (recipe_dir / "meta.yaml").write_text(yaml.safe_dump(meta))
    forge.catalog.catalog.publish_catalog(RunSpec(str(recipe_dir), "demo", str(tmp_path / "target"), "c"))
    doc = json.loads((tmp_path / "target" / "demo" / "collection.json").read_text())
    assert doc["forge:update_schedule"] == {"cron": "0 6 * * *", "timezone": "UTC"}
    updated = dt.datetime.fromisoformat(doc["forge:updated"])
    fresh = listing(str(tmp_path / "target"), now=updated + dt.timedelta(minutes=5))[-1]
    assert fresh.startswith("  last update ") and "(5 min ago)" in fresh and "STALE" not in fresh
    # 06:00 on the day after the last update, and the two after: three missed at 07:00 three days on.
    last_tick = dt.datetime.combine(updated.date(), dt.time(6), dt.UTC)
    last_tick += dt.timedelta(days=1) if updated >= last_tick else dt.timedelta(0)
    late = listing(str(tmp_path / "target"), now=last_tick + dt.timedelta(days=2, hours=1))[-1]
    assert "3 scheduled update(s) missed, 2 d behind" in late and late.endswith(
        "STALE (no update within 36h)"
    )
