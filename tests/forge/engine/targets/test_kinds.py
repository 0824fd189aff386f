"""Every kind of target behind one interface: found by its format (and, for an Icechunk repository, by
what it holds), opened the same way, its history where it keeps one, and described to readers by a
snippet that opens the same data."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import xarray as xr

from forge.engine.stages import run_spec_for
from forge.engine.targets import (
    IcechunkReferences,
    IcechunkTarget,
    KerchunkJSON,
    KerchunkParquet,
    NoHistory,
    ZarrTarget,
    references_at,
    target_at,
    target_found,
)
from forge.recipe.loading import load_recipe
from forge.run import run_locally
from forge.testing import forge_cli, make_dataset, write_inputs

COPY = "XarrayZarrRecipe(pattern, target_chunks={{'time': 2}}, target_format={fmt!r})"
REFERENCES = "ReferenceRecipe(pattern, target_format={fmt!r})"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    return write_inputs(make_dataset(4), tmp_path_factory.mktemp("sources"), 1)


def published(tmp_path: Path, sources: list[Path], fmt: str, made: str) -> str:
    """The four sources built by a recipe ``made`` (COPY or REFERENCES) in ``fmt``; the target's URL."""
    recipe = tmp_path / "demo.py"
    recipe.write_text(
        textwrap.dedent(f"""
        from forge import ConcatDim, FilePattern, ReferenceRecipe, XarrayZarrRecipe

        def url(time):
            return {str(sources[0].parent)!r} + f"/all_{{time:04d}}.nc"

        pattern = FilePattern(url, ConcatDim("time", list(range(4)), nitems_per_file=1))
        recipe = {made.format(fmt=fmt)}
        """)
    )
    run = run_spec_for(str(recipe), str(tmp_path / "target"), str(tmp_path / "cache"), target_format=fmt)
    return run_locally(load_recipe(str(recipe)), run)["url"]


KINDS = [
    (ZarrTarget, "zarr", COPY),
    (IcechunkTarget, "icechunk", COPY),
    (IcechunkReferences, "icechunk", REFERENCES),
    (KerchunkJSON, "json", REFERENCES),
    (KerchunkParquet, "parquet", REFERENCES),
]


@pytest.mark.parametrize("kind, fmt, made", KINDS, ids=[k.__name__ for k, _, _ in KINDS])
def test_each_kind_is_found_opens_its_data_and_tells_readers_how(tmp_path, sources, kind, fmt, made):
    url = published(tmp_path, sources, fmt, made)
    target = target_found(url, fmt)
    assert type(target) is kind
    if fmt == "icechunk":  # a copy and references share the format: told apart by what main holds
        other = IcechunkTarget if kind is IcechunkReferences else IcechunkReferences
        assert not other(url).is_here()
    ds = target.open_published().load()
    assert ds.sizes["time"] == 4 and float(ds["tas"].sum()) != 0
    # The catalog's asset says what a reader needs, and the page's snippet opens the same data.
    fields = target.asset_fields()
    assert fields["forge:format"] == fmt and fields.get("forge:references", False) == target.references
    assert ("icechunk:branch" in fields) == (fmt == "icechunk")
    title, code = target.reader_snippet()
    scope: dict = {}
    exec(code, scope)  # noqa: S102  (the code a reader copies from the catalog page)
    xr.testing.assert_identical(scope["ds"].load(), ds)


@pytest.mark.parametrize("fmt, made", [("zarr", COPY), ("json", REFERENCES)])
def test_only_icechunk_targets_keep_a_history(tmp_path, sources, fmt, made):
    url = published(tmp_path, sources, fmt, made)
    with pytest.raises(NoHistory, match=f"a {fmt} target keeps no history"):
        target_found(url, fmt).history()
    with pytest.raises(NoHistory, match="cannot be rolled back"):
        target_found(url, fmt).rollback("anything", {})
    # and the command says so, on the recipe's target, whatever its format
    shown = forge_cli("history", str(tmp_path / "demo.py"), "--target-root", str(tmp_path / "target"))
    assert shown.returncode != 0 and f"a {fmt} target keeps no history" in shown.stderr.splitlines()[-1]


def test_icechunk_references_keep_their_runs_as_copies_do(tmp_path, sources):
    url = published(tmp_path, sources, "icechunk", REFERENCES)
    [build] = target_found(url, "icechunk").history()
    assert build.metadata["forge:kind"] == "build" and build.metadata["forge:run_id"] == "local"
    assert references_at(url).held_inputs() == 4


def test_a_format_no_kind_writes_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="no target format 'netcdf' for a copy: one of icechunk, zarr"):
        target_at(str(tmp_path / "x.nc"), "netcdf")
    with pytest.raises(ValueError, match="one of icechunk, json, parquet"):
        target_at(str(tmp_path / "x.zarr"), "zarr", references=True)
    assert references_at(str(tmp_path / "demo.parquet")).format == "parquet"
