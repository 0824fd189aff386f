"""Storage: the files under a root, through its methods only (local disk here; object stores in
tests/integration/test_object_storage.py)."""

from __future__ import annotations

from pathlib import Path

from forge.io.storage import Storage
from forge.io.urls import absolute, join


def test_text_round_trips_and_missing_keys_read_as_none(tmp_path: Path):
    storage = Storage(str(tmp_path / "root"))
    assert storage.read_text("a/b.json") is None and not storage.exists("a/b.json")
    storage.write_text("a/b.json", '{"x": 1}')  # folders are made as needed
    assert storage.read_text("a/b.json") == '{"x": 1}' and storage.exists("a/b.json")
    storage.write_bytes("a/c.bin", b"12345")
    assert storage.list() == ["a/b.json", "a/c.bin"] and storage.glob("a/*.bin") == ["a/c.bin"]
    assert storage.size("a/c.bin") == 5 and storage.total_size() == 5 + len('{"x": 1}')


def test_delete_removes_a_key_or_a_whole_folder_and_ignores_what_is_not_there(tmp_path: Path):
    storage = Storage(str(tmp_path / "root"))
    storage.write_text("store/zarr.json", "{}")
    storage.write_text("store/tas/c/0", "x")
    storage.delete("store/tas")
    assert storage.list() == ["store/zarr.json"]
    storage.delete("store")
    storage.delete("never-there")
    assert storage.list() == []


def test_a_file_put_atomically_is_moved_in_whole(tmp_path: Path):
    storage = Storage(str(tmp_path / "root"))
    local = tmp_path / "download.part"
    local.write_bytes(b"data")
    storage.put_file_atomic(local, "cache/abc-file.nc")
    assert not local.exists() and storage.read_text("cache/abc-file.nc") == "data"
    with storage.local_path("cache/abc-file.nc") as path:
        assert path.read_bytes() == b"data"


def test_join_and_absolute_keep_urls_and_resolve_local_paths(tmp_path: Path, monkeypatch):
    assert join("s3://bucket/prefix/", "/a/", "b") == "s3://bucket/prefix/a/b"
    assert absolute("s3://bucket/x") == "s3://bucket/x"
    monkeypatch.chdir(tmp_path)
    assert absolute("data/target") == str(tmp_path / "data" / "target")
