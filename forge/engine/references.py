"""Reference (virtual) stores: the inputs' chunks stay where they are, the target holds where each one
is (VirtualiZarr manifests), written to an Icechunk repository with virtual chunk containers or to
kerchunk references (JSON or Parquet).

plan (:func:`plan_references`) -> reference each batch of inputs (:func:`reference_batch`, only
metadata is read) -> combine and write (:func:`write_references`); in append mode only the inputs
beyond those the store already references, up to the source's frontier (:func:`plan_reference_append`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
import numpy as np
import xarray as xr

from forge.engine.append import available_prefix, new_inputs
from forge.engine.attrs import COMPLETE_ATTR
from forge.engine.caching import plan_cache
from forge.engine.types import CacheBatch, RunSpec
from forge.errors import ForgeError, RecipeError
from forge.io.s3_options import S3Options
from forge.io.secrets import Lookup, env_lookup
from forge.publish.validate import check_coordinate, check_no_retraction
from forge.recipe.patterns import Key
from forge.recipe.recipes import ReferenceRecipe

REFERENCED_INPUTS_ATTR = "forge:referenced_inputs"  # concat positions the store references, for appends
SOURCE_OPTIONS_ATTR = "forge:source_storage_options"  # s3fs options to read the sources (no credentials)
NO_OPTIONS = S3Options()


class UnreferenceableInput(ForgeError):
    """An input could not be referenced (not found, not a format VirtualiZarr reads)."""


def source_url(url: str) -> str:
    """``url`` as references name it: a local path becomes a ``file://`` URL."""
    if "://" in url:
        return url
    return Path(url).resolve().as_uri()


def prefix_of(url: str) -> str:
    """The store a source lives in: ``scheme://host/`` (``file:///`` for local files)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


def plan_references(recipe: ReferenceRecipe, run: RunSpec) -> list[CacheBatch]:
    """The inputs in batches, by source host (as the cache stage plans them), named ``reference-NNNN``."""
    return plan_cache(recipe, run, "reference")


def _registry(urls: Sequence[str], s3: S3Options = NO_OPTIONS, lookup: Lookup = env_lookup):
    """obstore stores for the sources at ``urls``: HTTP(S) as it is, S3 as the recipe's options say."""
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import from_url

    stores = {}
    for url in urls:
        prefix = prefix_of(url)
        if prefix not in stores:
            options: dict[str, Any] = {}
            if prefix.startswith("http"):
                options = {"client_options": {"allow_http": True}}
            elif prefix.startswith("s3://"):
                options = s3.obstore_config(lookup)
            stores[prefix] = from_url(prefix, **options)
    return ObjectStoreRegistry(stores)


def _parser(file_type: str):
    from virtualizarr.parsers import HDFParser, NetCDF3Parser

    if file_type in ("netcdf4", "hdf5"):
        return HDFParser()
    if file_type == "netcdf3":
        return NetCDF3Parser()
    raise ForgeError(f"reference recipes read netcdf4, hdf5 or netcdf3 inputs, not {file_type!r}")


def reference_batch(
    recipe: ReferenceRecipe, batch: CacheBatch, lookup: Lookup = env_lookup
) -> list[tuple[Key, xr.Dataset]]:
    """Each input of ``batch`` as a virtual dataset: its variables' chunk manifests (file, offset,
    length), its coordinates loaded. Reads only the inputs' metadata (S3 sources as the recipe's
    ``storage_options`` say, credentials by their secret names)."""
    from virtualizarr import open_virtual_dataset

    urls = [source_url(item.fetch_url) for item in batch.items]
    registry = _registry(urls, recipe.s3, lookup)
    parser = _parser(recipe.pattern.file_type)
    out = []
    for item, url in zip(batch.items, urls, strict=True):
        try:
            vds = open_virtual_dataset(
                url, registry=registry, parser=parser, loadable_variables=recipe.loadable_variables
            )
        except FileNotFoundError as e:
            raise UnreferenceableInput(f"{item.url}: not found at the source ({url})") from e
        except (ConnectionError, TimeoutError):
            raise  # passing: the task's retries take it
        except Exception as e:
            raise UnreferenceableInput(f"{item.url}: cannot be referenced: {type(e).__name__}: {e}") from e
        out.append((item.key, vds))
    return out


def check_even_chunks(recipe: ReferenceRecipe, members: Sequence[tuple[Key, xr.Dataset]]) -> None:
    """Inputs whose arrays are chunked differently (a month of days per chunk: 28 to 31) cannot be
    referenced as one array: VirtualiZarr concatenates chunk manifests of one chunk shape only, and
    writes no variable-length (rectilinear) chunk grid. Refused before anything is written, naming two
    inputs that differ, with the copying recipe as the way out."""
    from virtualizarr.manifests import ManifestArray
    from virtualizarr.manifests.utils import manifest_chunk_shape

    def chunk_shape(var: xr.Variable | None) -> tuple[int, ...] | None:
        data = getattr(var, "data", None)
        return tuple(manifest_chunk_shape(data.metadata)) if isinstance(data, ManifestArray) else None

    first_key, first = members[0]
    for key, vds in members[1:]:
        for name, var in vds.variables.items():
            ours, theirs = chunk_shape(var), chunk_shape(first.variables.get(name))
            if ours is not None and theirs is not None and ours != theirs:
                one, other = recipe.pattern[first_key], recipe.pattern[key]
                raise RecipeError(
                    f"{name!r} is stored in chunks of {theirs} in {one} but {ours} in {other}: "
                    "references can only describe inputs chunked alike (VirtualiZarr concatenates chunk "
                    "manifests of one shape; variable-length chunk grids are not written by this stack). "
                    "Nothing was written. Copy the data instead, rechunked evenly: "
                    "XarrayZarrRecipe(pattern, target_chunks={...}) with the same pattern."
                )


def combine_references(recipe: ReferenceRecipe, refs: Sequence[tuple[Key, xr.Dataset]]) -> xr.Dataset:
    """The inputs' virtual datasets as one: concatenated along the concat dimension (in key order),
    stacked along a second ConcatDim, merged across merge dimensions."""
    concat, stack = recipe.concat_dim, recipe.stack_dim
    groups: dict[tuple, dict[int, list[tuple[Key, xr.Dataset]]]] = {}
    for key, vds in refs:
        merge_at = tuple((d.name, key[d.name]) for d in recipe.pattern.merge_dims)
        groups.setdefault(merge_at, {}).setdefault(key[stack] if stack else 0, []).append((key, vds))
    parts = []
    for stacked in groups.values():
        along = []
        for _, members in sorted(stacked.items()):
            members.sort(key=lambda kv: kv[0][concat] if concat else 0)
            check_even_chunks(recipe, members)
            datasets = [vds for _, vds in members]
            along.append(_concat(datasets, concat) if concat and len(datasets) > 1 else datasets[0])
        parts.append(_concat(along, stack) if len(along) > 1 else along[0])
    if len(parts) == 1:
        return parts[0]
    return xr.merge(parts, compat="override", combine_attrs="drop_conflicts")


def _concat(datasets: Sequence[xr.Dataset], dim: str, attrs: str = "drop_conflicts") -> xr.Dataset:
    """Virtual datasets end to end along ``dim``; the rest (variables without ``dim``: static ones,
    bounds stacked inputs share) from the first: its references are the same file's."""
    return xr.concat(
        datasets, dim=dim, data_vars="minimal", coords="minimal", compat="override", combine_attrs=attrs
    )


def _attrs(recipe: ReferenceRecipe, run: RunSpec, source: dict, n_inputs: int) -> dict:
    """The store's attributes: the inputs', the recipe's, and forge's (the catalog lists a store that
    says it is complete)."""
    attrs = {**source, **recipe.attrs, REFERENCED_INPUTS_ATTR: n_inputs, "forge:recipe_id": run.recipe_id}
    attrs[COMPLETE_ATTR] = True
    if run.version:
        attrs["forge:version"] = attrs["forge:dataset_version"] = run.version
    return attrs


def agreed(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict:
    """The attributes of a store extended by inputs with attributes ``new``: those all inputs agree on
    (as a build keeps them), and forge's own from ``new``."""
    kept = {k: v for k, v in old.items() if new.get(k, v) == v}
    return {**kept, **{k: v for k, v in new.items() if k.startswith("forge:")}}


def write_references(
    recipe: ReferenceRecipe,
    run: RunSpec,
    refs: Sequence[tuple[Key, xr.Dataset]],
    provenance: Mapping[str, Any],
) -> dict:
    """Write (or, with ``run.append_from`` set, extend) the target with ``refs``. An Icechunk target gets
    one commit, published as every run's is (:mod:`forge.publish.icechunk`: a run branch, the checks,
    then ``main`` moved only if no other run moved it, with the run's ``provenance`` in the commit's
    metadata); kerchunk references are written whole, in one write, after the new ones are combined
    with what the target already references."""
    vds = combine_references(recipe, refs)
    concat = recipe.concat_dim
    before = run.append_from or 0
    n_new = len({key[concat] for key, _ in refs}) if concat else len(refs)
    vds.attrs = _attrs(recipe, run, vds.attrs, before + n_new)
    if recipe.s3.public and any(p.startswith("s3://") for p in _containers(vds)):
        vds.attrs[SOURCE_OPTIONS_ATTR] = recipe.s3.public  # how readers reach the sources (no credentials)
    if concat and concat in vds.coords:  # the checks a store's publish makes, before anything is written
        held = open_references(run.target_url)[concat].values if before else vds[concat].values[:0]
        check_coordinate(np.concatenate([held, vds[concat].values]), concat, run.target_url)
        if not before:
            published = referenced_inputs(run) or 0
            check_no_retraction(published, n_new, concat, run.target_url)
    extra = REFERENCE_WRITERS[run.target_format](vds, run, recipe, provenance, n_new)
    appended = n_new if before else 0
    return {
        "url": run.target_url,
        "references": True,
        "inputs": before + n_new,
        "appended": appended,
        **extra,
    }


def _referenced(url: str, like: xr.Dataset) -> xr.Dataset:
    """What the kerchunk references at ``url`` hold, as a virtual dataset like ``like``: its references
    read back (VirtualiZarr), the variables ``like`` holds in memory read through them."""
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import from_url
    from virtualizarr import open_virtual_dataset
    from virtualizarr.manifests import ManifestArray
    from virtualizarr.parsers import KerchunkJSONParser, KerchunkParquetParser

    loaded = [n for n, v in like.variables.items() if not isinstance(v.data, ManifestArray)]
    parser_type = KerchunkJSONParser if url.endswith(".json") else KerchunkParquetParser
    target = source_url(url)
    registry = ObjectStoreRegistry({prefix_of(target): from_url(prefix_of(target))})
    vds = open_virtual_dataset(
        target, registry=registry, parser=parser_type(skip_variables=loaded), loadable_variables=[]
    )
    values = open_references(url)[loaded].load()
    return vds.assign_coords({n: values[n].variable for n in loaded if n in like.coords}).assign(
        {n: values[n].variable for n in loaded if n not in like.coords}
    )


def _containers(vds: xr.Dataset) -> list[str]:
    """The URL prefixes of the stores the references point into: ``scheme://host/``, and for local
    files the folder that holds them all (Icechunk wants a path)."""
    from virtualizarr.manifests import ManifestArray

    prefixes, local = set(), set()
    for var in vds.variables.values():
        if isinstance(var.data, ManifestArray):
            for path in var.data.manifest.iter_nonempty_paths():
                if str(path).startswith("file://"):
                    local.add(os.path.dirname(urlsplit(str(path)).path))
                else:
                    prefixes.add(prefix_of(str(path)))
    if local:
        prefixes.add(Path(os.path.commonpath(sorted(local))).as_uri().rstrip("/") + "/")
    return sorted(prefixes)


def _container_store(prefix: str, s3: S3Options):
    import icechunk

    parts = urlsplit(prefix)
    scheme = parts.scheme
    if scheme in ("http", "https"):
        return icechunk.http_store()
    if scheme == "file":
        return icechunk.local_filesystem_store(urlsplit(prefix).path)
    if scheme == "s3":
        return s3.icechunk_store()
    if scheme in ("gs", "gcs"):
        return icechunk.gcs_store()
    raise ForgeError(f"Icechunk cannot hold references to {prefix} sources")


def _repository(url: str, prefixes: Sequence[str] = (), s3: S3Options = NO_OPTIONS):
    """The Icechunk repository at ``url`` (created when missing), with a virtual chunk
    container for each of ``prefixes`` no container covers yet (saved in its config), opened with read
    access to all of its containers."""
    import icechunk

    from forge.publish.icechunk import storage_for

    storage = storage_for(url)
    new = not icechunk.Repository.exists(storage)
    config = None if new else icechunk.Repository.fetch_config(storage)
    config = config or icechunk.RepositoryConfig.default()
    known = set(config.virtual_chunk_containers or {})
    missing = [p for p in prefixes if not any(p.startswith(k) for k in known)]
    for prefix in missing:
        config.set_virtual_chunk_container(
            icechunk.VirtualChunkContainer(prefix, _container_store(prefix, s3))
        )
    access = dict.fromkeys(known | set(missing))
    if new:
        return icechunk.Repository.create(storage, config=config, authorize_virtual_chunk_access=access)
    repo = icechunk.Repository.open(
        storage, config=config if missing else None, authorize_virtual_chunk_access=access
    )
    if missing:
        repo.save_config()
    return repo


def _write_icechunk(
    vds: xr.Dataset,
    run: RunSpec,
    append_dim: str | None,
    provenance: Mapping[str, Any],
    n_new: int,
    s3: S3Options,
) -> str:
    import zarr
    from zarr.core.sync import sync

    from forge.publish import icechunk as ic

    txn, session = ic.begin(run.target_url, _repository(run.target_url, _containers(vds), s3))
    if append_dim:
        before = dict(zarr.open_group(session.store, mode="r").attrs)
    else:  # a build replaces what main holds (to_icechunk writes only into an empty store)
        sync(session.store.clear())
    vds.vz.to_icechunk(session.store, append_dim=append_dim)
    if append_dim:  # to_icechunk wrote the new inputs' attributes
        zarr.open_group(session.store, mode="r+").attrs.put(agreed(before, vds.attrs))
    kind = "append" if append_dim else "build"
    held = vds.attrs[REFERENCED_INPUTS_ATTR]
    metadata = ic.run_metadata(kind, run.recipe_id, provenance, n_new, held, run.append_from)
    message = f"{run.recipe_id}: {kind}, references to {held} inputs"
    return ic.commit_and_publish(txn, session, message, metadata)


def _to_icechunk(
    vds: xr.Dataset, run: RunSpec, recipe: ReferenceRecipe, provenance: Mapping[str, Any], n_new: int
) -> dict[str, Any]:
    append_dim = recipe.concat_dim if run.append_from else None
    return {"snapshot": _write_icechunk(vds, run, append_dim, provenance, n_new, recipe.s3)}


def _with_held(vds: xr.Dataset, run: RunSpec, recipe: ReferenceRecipe) -> xr.Dataset:
    """Kerchunk references are written whole: an append's new ones after those the target holds."""
    if not run.append_from:
        return vds
    old = _referenced(run.target_url, vds)
    attrs = agreed(old.attrs, vds.attrs)
    vds = _concat([old, vds], recipe.concat_dim, "override")  # variables' attributes: the store's
    vds.attrs = attrs
    return vds


def _to_kerchunk_json(
    vds: xr.Dataset, run: RunSpec, recipe: ReferenceRecipe, provenance: Mapping[str, Any], n_new: int
) -> dict[str, Any]:
    """One write of the whole file: readers see the old references or the new, never a mix."""
    refs = _with_held(vds, run, recipe).vz.to_kerchunk(format="dict")
    with fsspec.open(run.target_url, "w") as f:
        json.dump(refs, f)
    return {}


def _to_kerchunk_parquet(
    vds: xr.Dataset, run: RunSpec, recipe: ReferenceRecipe, provenance: Mapping[str, Any], n_new: int
) -> dict[str, Any]:
    """A directory of record files, written by VirtualiZarr."""
    vds = _with_held(vds, run, recipe)
    fs, path = fsspec.core.url_to_fs(run.target_url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    vds.vz.to_kerchunk(run.target_url, format="parquet")
    return {}


# How each reference format is written: one writer per format, found by the run's target_format.
REFERENCE_WRITERS = {"icechunk": _to_icechunk, "json": _to_kerchunk_json, "parquet": _to_kerchunk_parquet}


def referenced_inputs(run: RunSpec) -> int | None:
    """How many concat positions the target references (None: there is no target yet)."""
    try:
        ds = open_references(run.target_url)
    except FileNotFoundError:
        return None
    return int(ds.attrs.get(REFERENCED_INPUTS_ATTR, 0))


def plan_reference_append(
    recipe: ReferenceRecipe, run: RunSpec, exists: Callable[[str], bool]
) -> tuple[RunSpec, int]:
    """The run that references what is new: the pattern's inputs beyond those the target references,
    up to the first one the source does not have yet (found as a store's append finds it, a gap at the
    source refused). ``exists`` asks the source for a recipe URL. Returns the run and how many concat
    positions it adds."""
    done = referenced_inputs(run)
    if done is None:
        raise ForgeError(f"{run.target_url}: nothing to append to (build the references first)")
    concat = recipe.concat_dim
    positions = new_inputs(recipe.pattern, concat, done) if concat else []
    present = done + available_prefix(positions, exists)
    return replace(run, append_from=done, prune=present), present - done


def open_references(url: str, **kwargs) -> xr.Dataset:
    """A reference store as xarray opens it (lazily), reading chunks from the sources; ``kwargs`` go to
    ``xr.open_zarr``."""
    if url.rstrip("/").endswith(".icechunk"):
        import icechunk

        from forge.publish.icechunk import storage_for

        if not icechunk.Repository.exists(storage_for(url)):
            raise FileNotFoundError(url)
        repo = _repository(url)
        return xr.open_zarr(repo.readonly_session("main").store, consolidated=False, zarr_format=3, **kwargs)
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise FileNotFoundError(url)
    # zarr-python 3 reads through an async filesystem: the references', and the sources' behind them
    from zarr.storage import FsspecStore

    def opened(remote_options: Mapping[str, Any]) -> xr.Dataset:
        refs = fsspec.filesystem(
            "reference", fo=url, remote_options={**remote_options, "asynchronous": True}, asynchronous=True
        )
        return xr.open_zarr(FsspecStore(refs, read_only=True), consolidated=False, zarr_format=2, **kwargs)

    ds = opened({})
    # S3 sources on an endpoint of their own, or read anonymously: as the references say
    return opened(ds.attrs[SOURCE_OPTIONS_ATTR]) if SOURCE_OPTIONS_ATTR in ds.attrs else ds
