import time

import pandas as pd
import pytest

from forge import ConcatDim, FilePattern, Key, MergeDim, Secret
from forge.recipe.patterns import parse_rewrites, rewrite_url


def url(variable: str, time: pd.Timestamp) -> str:
    return f"https://example.org/{variable}/{time:%Y%m%d}.nc"


def test_format_function_gets_one_keyword_per_dim():
    p = FilePattern(
        url, MergeDim("variable", ["a", "b"]), ConcatDim("time", pd.date_range("2000", periods=3))
    )
    items = list(p.items())
    assert len(p) == 6 == len(items)
    assert items[0] == (Key((("variable", 0), ("time", 0))), "https://example.org/a/20000101.nc")
    assert p[Key.from_dict({"variable": 1, "time": 2})] == "https://example.org/b/20000103.nc"


def test_keys_are_lazy_for_225k_inputs():
    t0 = time.perf_counter()
    p = FilePattern(lambda time: f"https://example.org/{time}.nc", ConcatDim("time", range(225_000)))
    assert len(p) == 225_000
    assert next(iter(p.items()))[1] == "https://example.org/0.nc"
    assert time.perf_counter() - t0 < 1.0


def test_prune_keeps_first_concat_keys_and_all_merge_keys():
    p = FilePattern(
        url, MergeDim("variable", ["a", "b"]), ConcatDim("time", pd.date_range("2000", periods=9))
    )
    pruned = p.prune(2)
    assert pruned.dims == {"variable": 2, "time": 2}
    assert [u for _, u in pruned.items()][:2] == [u for _, u in p.items()][:2]


def test_bad_patterns_are_refused():
    with pytest.raises(ValueError, match="no argument"):
        FilePattern(lambda time: "x", ConcatDim("date", [1]))
    with pytest.raises(ValueError, match="at most two ConcatDims"):
        FilePattern(lambda a, b, c: "x", ConcatDim("a", [1]), ConcatDim("b", [1]), ConcatDim("c", [1]))
    with pytest.raises(TypeError, match="Secret"):
        FilePattern(lambda t: "x", ConcatDim("t", [1]), fsspec_open_kwargs={"auth": ("user", "hunter2")})
    with pytest.raises(TypeError, match="credential"):
        FilePattern(
            lambda t: "x", ConcatDim("t", [1]), fsspec_open_kwargs={"headers": {"Authorization": "x"}}
        )
    FilePattern(lambda t: "x", ConcatDim("t", [1]), fsspec_open_kwargs={"auth": ("user", Secret("PW"))})


def test_url_rewrites():
    rewrites = parse_rewrites(["https://www.ncei.noaa.gov/=http://127.0.0.1:8080/"])
    assert rewrite_url("https://www.ncei.noaa.gov/data/x.nc", rewrites) == "http://127.0.0.1:8080/data/x.nc"
    assert rewrite_url("https://other.org/x.nc", rewrites) == "https://other.org/x.nc"
    with pytest.raises(ValueError, match="FROM=TO"):
        parse_rewrites(["nope"])


def test_pattern_digest_tracks_urls():
    a = FilePattern(lambda time: f"https://e.org/{time}.nc", ConcatDim("time", range(3)))
    b = FilePattern(lambda time: f"https://e.org/{time}.nc", ConcatDim("time", range(4)))
    assert a.sha256() == a.sha256() != b.sha256()
