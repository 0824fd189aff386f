"""Reference recipes: pangeo-forge's ``HDFReferenceRecipe`` (0.9) and ``OpenWithKerchunk |
WriteCombinedReference`` (0.10) ported with ``forge port``, then built against the loopback replica of
NCEI's server (real NCEI URLs, rewritten) into kerchunk JSON, kerchunk Parquet and an Icechunk repository
with virtual chunks. Each time the references, opened with xarray, read values identical to the sources,
from the sources (their bytes fetched by range), and an append references only the new inputs."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import icechunk
import pandas as pd
import pytest
import xarray as xr

import forge
from forge import ConcatDim, FilePattern, ReferenceRecipe
from forge.engine.references import REFERENCED_INPUTS_ATTR, open_references
from forge.engine.stages import run_spec_for
from forge.errors import RecipeError
from forge.port.feedstock import port_path
from forge.publish import icechunk as ic
from forge.publish.validate import ValidationError
from forge.recipe.loading import load_recipe
from forge.replicas.oisst import OisstReplica, oisst_url
from forge.run import run_locally
from forge.testing import assert_same_dataset, forge_cli, open_sources
from tests.test_catalog import assert_valid_stac

ORIGINALS = Path(__file__).parent / "data" / "pangeo_forge" / "oisst-references"
NCEI = "https://www.ncei.noaa.gov/"


def assert_references_match(url: str, sources: list[Path], n: int) -> None:
    """The references read what the first ``n`` sources hold, and say how many inputs they reference."""
    refs = open_references(url).load()
    assert refs.attrs.pop(REFERENCED_INPUTS_ATTR) == n
    refs.attrs = {k: v for k, v in refs.attrs.items() if not k.startswith("forge:")}
    assert_same_dataset(refs, open_sources(sorted(sources)[:n]))


def test_a_09_reference_recipe_ports_and_its_json_references_read_the_sources(tmp_path, replica):
    [ported] = port_path(ORIGINALS / "recipe_09.py", tmp_path / "oisst_refs.py")
    assert 'line 18: HDFReferenceRecipe(...) -> ReferenceRecipe(..., target_format="json")' in map(
        str, ported.notes
    )
    assert not ported.untranslated
    ref, rewrites = str(ported.written), {NCEI: replica.url + "/"}
    run = run_spec_for(ref, str(tmp_path / "target"), str(tmp_path / "cache"), 2, rewrites)
    url = run_locally(load_recipe(ref), run)["url"]
    assert url.endswith("oisst_refs.json")
    sources = lambda: list(replica.files.directory.rglob("*.nc"))  # noqa: E731
    replica.reset_counts()
    assert_references_match(url, sources(), 2)
    # Chunks come from the sources, by range: no source file is read whole.
    assert replica.statuses[206] > 0 and replica.statuses[200] == 0
    assert not (tmp_path / "cache").exists()  # nothing copied

    appended = run_locally(
        load_recipe(ref), run_spec_for(ref, run.target_root, run.cache_root, 4, rewrites), append=True
    )
    assert (appended["inputs"], appended["appended"]) == (4, 2)
    assert_references_match(url, sources(), 4)

    # In the STAC catalog of the target root, as references, and opened through it
    collection = json.loads((tmp_path / "target" / "oisst_refs" / "collection.json").read_text())
    assert_valid_stac(collection)
    asset = collection["assets"]["zarr"]
    assert (asset["href"], asset["type"], asset["roles"]) == (
        "../oisst_refs.json",
        "application/json",
        ["data", "references"],
    )
    assert collection["extent"]["temporal"]["interval"] == [["1981-09-01T12:00:00Z", "1981-09-04T12:00:00Z"]]
    xr.testing.assert_identical(
        forge.open_dataset("oisst_refs", catalog=str(tmp_path / "target")), open_references(url)
    )


def test_an_icechunk_reference_store_commits_each_run_and_appends(tmp_path):
    """Virtual chunks in local files."""
    files = OisstReplica(tmp_path / "replica", nlat=36, nlon=72)
    days = pd.date_range("1981-09-01", periods=3)
    paths = [files.generate(urlsplit(oisst_url(day)).path) for day in days]
    root = paths[0].parents[1].as_uri() + "/"  # .../36x72/ holds {yyyymm}/oisst-....nc, as NCEI does
    recipe = tmp_path / "refs.py"
    recipe.write_text(
        "import pandas as pd\nfrom forge import ConcatDim, FilePattern, ReferenceRecipe\n"
        "from forge.replicas.oisst import oisst_url\n\n"
        'days = pd.date_range("1981-09-01", "1981-09-30")\n'
        "def url(time):\n    return oisst_url(time)\n\n"
        'pattern = FilePattern(url, ConcatDim("time", days, nitems_per_file=1))\n'
        'recipe = ReferenceRecipe(pattern, target_format="icechunk")\n'
    )
    rewrites = {f"{NCEI}data/sea-surface-temperature-optimum-interpolation/v2.1/access/avhrr/": root}
    run = run_spec_for(str(recipe), str(tmp_path / "target"), str(tmp_path / "cache"), 2, rewrites)
    url = run_locally(load_recipe(str(recipe)), run)["url"]
    assert url.endswith("refs.icechunk")
    assert_references_match(url, paths, 2)
    # Two days exist at the source of the 30 the pattern names, and a third lands: the append takes it.
    appended = run_locally(
        load_recipe(str(recipe)),
        run_spec_for(str(recipe), run.target_root, run.cache_root, None, rewrites),
        append=True,
    )
    assert (appended["inputs"], appended["appended"]) == (3, 1)
    assert_references_match(url, paths, 3)
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(url))
    assert len(list(repo.ancestry(branch="main"))) == 3  # the repository's first commit, then one per run
    assert not [b for b in repo.list_branches() if b != "main"]  # each run's branch went once published
    # Through the catalog too: its virtual chunk containers authorized for reading
    through_catalog = forge.open_dataset("refs", catalog=str(tmp_path / "target")).load()
    xr.testing.assert_identical(through_catalog, open_references(url).load())

    # Published as every Icechunk target is: `forge history` lists both runs, `forge rollback` undoes one.
    where = [str(recipe), "--target-root", run.target_root]
    listed = forge_cli("history", *where)
    assert listed.returncode == 0, listed.stderr
    append_line, build_line = listed.stdout.strip().splitlines()
    assert "refs: append, references to 3 inputs run local" in append_line
    assert "refs: build, references to 2 inputs run local" in build_line
    rolled = forge_cli("rollback", *where, "--to", build_line.split()[0])
    assert rolled.returncode == 0, rolled.stderr
    assert_references_match(url, paths, 2)
    assert forge_cli("history", *where).stdout.splitlines()[0].split("  ")[-1].startswith("rollback to")
    # A rebuild replaces what main holds, in one more commit; one of fewer inputs is refused.
    rebuilt = run_locally(load_recipe(str(recipe)), replace(run, prune=3))
    assert rebuilt["inputs"] == 3 and [c.metadata["forge:kind"] for c in ic.history(url)][:2] == [
        "build",
        "rollback",
    ]
    assert_references_match(url, paths, 3)
    with pytest.raises(ValidationError, match="never shortens a published dataset"):
        run_locally(load_recipe(str(recipe)), run)
    assert_references_match(url, paths, 3)


def url_of(time: pd.Timestamp) -> str:
    return oisst_url(time)


def test_references_refuse_what_they_cannot_hold(tmp_path, replica):
    days = pd.date_range("1981-09-01", periods=2)
    with pytest.raises(RecipeError, match="read without the recipe's credentials"):
        ReferenceRecipe(FilePattern(url_of, ConcatDim("time", days), query_string_secrets={"token": "TOKEN"}))
    recipe = tmp_path / "refs.py"
    recipe.write_text(
        "import pandas as pd\nfrom forge import ConcatDim, FilePattern, ReferenceRecipe\n"
        "from forge.replicas.oisst import oisst_url\n\n"
        "def url(time):\n    return oisst_url(time)\n\n"
        'pattern = FilePattern(url, ConcatDim("time", pd.date_range("1981-09-01", periods=2)))\n'
        "recipe = ReferenceRecipe(pattern)\n"
    )
    with pytest.raises(RecipeError, match="writes icechunk or json or parquet, not 'zarr'"):
        run_spec_for(str(recipe), str(tmp_path), str(tmp_path), 2, None, "zarr")


def test_icechunk_references_read_http_sources_on_any_port(tmp_path, replica):
    """The replica listens on a port of its own, not 80 or 443 (Icechunk 1 read such chunk locations
    without their port)."""
    days = pd.date_range("1981-09-01", periods=2)
    recipe = ReferenceRecipe(FilePattern(url_of, ConcatDim("time", days, nitems_per_file=1)))
    run = run_spec_for("noaa-oisst", str(tmp_path / "target"), str(tmp_path), 2, {NCEI: replica.url + "/"})
    run = replace(run, recipe_id="refs", target_format="icechunk", recipe_blob=None)
    url = run_locally(recipe, run)["url"]
    assert urlsplit(replica.url).port not in (80, 443) and url.endswith("refs.icechunk")
    assert_references_match(url, [replica.files.path_for(day) for day in days], 2)


def test_a_010_reference_pipeline_ports_and_runs_as_a_flow_then_appends(tmp_path, replica, prefect_server):
    out = tmp_path / "refs.py"
    ported = forge_cli("port", str(ORIGINALS / "recipe_010.py"), "-o", str(out), timeout=60)
    assert ported.returncode == 0, ported.stdout + ported.stderr
    assert "the Beam pipeline -> ReferenceRecipe(pattern, target_format)" in ported.stdout
    # The replica outlives the runs (references point at it), so not --local-replica
    args = ["--url-rewrite", f"{NCEI}={replica.url}/", "--target-root", str(tmp_path / "target")]
    env = {"PREFECT_API_URL": prefect_server}

    def forge_run(*extra: str) -> subprocess.CompletedProcess:
        return forge_cli("run", str(out), *args, *extra, env=env)

    url = str(tmp_path / "target" / "refs.parquet")
    built = forge_run("--prune", "2")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert f"references: {url} (2 inputs)" in built.stdout
    logs = built.stdout + built.stderr
    for task in ("reference-0000", "write-references"):
        assert f"Task run '{task}' - Finished in state Completed()" in logs
    sources = lambda: list(replica.files.directory.rglob("*.nc"))  # noqa: E731
    assert_references_match(url, sources(), 2)

    appended = forge_run("--append", "--prune", "3")
    assert appended.returncode == 0, appended.stdout[-3000:] + appended.stderr[-3000:]
    assert f"references: {url} (3 inputs)" in appended.stdout
    assert_references_match(url, sources(), 3)


def test_references_stack_a_second_concat_dim_and_append_along_the_first(served, run_spec):
    from tests.test_local_runner import _ensemble

    expected, _ = _ensemble(served)

    def recipe(days: int) -> ReferenceRecipe:
        def url(time: int, member: int) -> str:
            return f"{served.url}/ens_{time}_{member}.nc"

        pattern = FilePattern(url, ConcatDim("time", list(range(days))), ConcatDim("member", [0, 1, 2]))
        return ReferenceRecipe(pattern, target_format="json")

    run = run_spec(target_format="json")
    url = run_locally(recipe(2), run)["url"]
    assert_same_dataset(_user_view(url), expected.isel(time=slice(0, 4)))
    assert run_locally(recipe(3), run, append=True)["appended"] == 1
    assert_same_dataset(_user_view(url), expected)


def _user_view(url: str) -> xr.Dataset:
    refs = open_references(url).load()
    refs.attrs = {k: v for k, v in refs.attrs.items() if not k.startswith("forge:")}
    return refs
