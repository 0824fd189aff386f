"""The cache stage: inputs grouped by source host into batches, fetched once, summarized."""

from __future__ import annotations

from pathlib import Path

from forge import ConcatDim, FilePattern, XarrayZarrRecipe
from forge.engine.caching import cache_batch, host_windows, plan_cache
from forge.engine.types import RunSpec, cache_key
from forge.testing import make_dataset, write_inputs


def two_hosts(days: int) -> XarrayZarrRecipe:
    """Even days from one host, odd days from another."""
    pattern = FilePattern(
        lambda time: f"https://{'a' if time % 2 == 0 else 'b'}.example/all_{time:04d}.nc",
        ConcatDim("time", list(range(days)), nitems_per_file=1),
    )
    return XarrayZarrRecipe(pattern, max_concurrency_per_host=2, cache_batch_size=3)


def test_inputs_are_batched_by_host_and_an_append_plans_only_the_new_ones(tmp_path: Path):
    recipe = two_hosts(12)
    run = RunSpec("demo", "demo", str(tmp_path / "t"), str(tmp_path / "c"))
    batches = plan_cache(recipe, run)
    assert [b.host for b in batches] == ["a.example"] * 2 + ["b.example"] * 2  # 6 each, at most 3 a batch
    assert [b.label for b in batches] == ["cache-0000", "cache-0001", "cache-0002", "cache-0003"]
    assert host_windows(recipe, batches) == {"a.example": 2, "b.example": 2}
    appending = RunSpec("demo", "demo", str(tmp_path / "t"), str(tmp_path / "c"), append_from=10)
    assert [i.key["time"] for b in plan_cache(recipe, appending) for i in b.items] == [10, 11]


def test_a_cached_input_is_fetched_once_under_a_secret_free_name(served, tmp_path: Path):
    write_inputs(make_dataset(2), Path(served.root), 1)
    pattern = FilePattern(lambda time: f"{served.url}/all_{time:04d}.nc", ConcatDim("time", [0, 1]))
    recipe = XarrayZarrRecipe(pattern, max_concurrency_per_host=1)  # one batch
    run = RunSpec("demo", "demo", str(tmp_path / "t"), str(tmp_path / "cache"))
    (batch,) = plan_cache(recipe, run)
    summaries = cache_batch(recipe, run, batch)
    assert [s.key["time"] for s in summaries] == [0, 1] and summaries[0].dims["time"] == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_file()) == sorted(
        cache_key(f"{served.url}/all_{t:04d}.nc") for t in (0, 1)
    )
    gets = served.methods["GET"]
    cache_batch(recipe, run, batch)
    assert served.methods["GET"] == gets, "a cached input is not fetched again"
