"""Reference (virtual) stores: the inputs' chunks stay where they are, the target holds where each one
is (VirtualiZarr manifests), written to an Icechunk repository with virtual chunk containers or to
kerchunk references (JSON or Parquet).

plan (:func:`plan_references`) -> reference each batch of inputs (:func:`reference_batch`, only
metadata is read) -> combine and write (:func:`write_references`); in append mode only the inputs
beyond those the store already references, up to the source's frontier (:func:`plan_reference_append`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import xarray as xr

from forge.engine.append import available_prefix, new_inputs
from forge.engine.attrs import COMPLETE_ATTR, REFERENCED_INPUTS_ATTR, SOURCE_OPTIONS_ATTR
from forge.engine.caching import plan_cache, source_probe
from forge.engine.targets import references_at
from forge.engine.types import CacheBatch, RunSpec
from forge.engine.virtual import concat as end_to_end
from forge.engine.virtual import containers, prefix_of, source_url
from forge.errors import ForgeError, RecipeError
from forge.io.s3_options import S3Options
from forge.io.secrets import Lookup, env_lookup
from forge.publish.validate import check_coordinate, check_no_retraction
from forge.recipe.patterns import Key
from forge.recipe.recipes import ReferenceRecipe

NO_OPTIONS = S3Options()


class UnreferenceableInput(ForgeError):
    """An input could not be referenced (not found, not a format VirtualiZarr reads)."""


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


# The VirtualiZarr parser that reads each file type's metadata.
PARSERS = {"netcdf4": "HDFParser", "hdf5": "HDFParser", "netcdf3": "NetCDF3Parser"}


def _parser(file_type: str):
    from virtualizarr import parsers

    if file_type not in PARSERS:
        raise ForgeError(f"reference recipes read {', '.join(PARSERS)} inputs, not {file_type!r}")
    return getattr(parsers, PARSERS[file_type])()


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
            along.append(end_to_end(datasets, concat) if concat and len(datasets) > 1 else datasets[0])
        parts.append(end_to_end(along, stack) if len(along) > 1 else along[0])
    if len(parts) == 1:
        return parts[0]
    return xr.merge(parts, compat="override", combine_attrs="drop_conflicts")


def _attrs(recipe: ReferenceRecipe, run: RunSpec, source: dict, n_inputs: int) -> dict:
    """The store's attributes: the inputs', the recipe's, and forge's (the catalog lists a store that
    says it is complete)."""
    attrs = {**source, **recipe.attrs, REFERENCED_INPUTS_ATTR: n_inputs, "forge:recipe_id": run.recipe_id}
    attrs[COMPLETE_ATTR] = True
    if run.version:
        attrs["forge:version"] = attrs["forge:dataset_version"] = run.version
    return attrs


def write_references(
    recipe: ReferenceRecipe,
    run: RunSpec,
    refs: Sequence[tuple[Key, xr.Dataset]],
    provenance: Mapping[str, Any],
) -> dict:
    """Write (or, with ``run.append_from`` set, extend) the target with ``refs``, after the checks a
    store's publish makes, in one step (:class:`~forge.engine.targets.references.ReferenceTarget`: an
    Icechunk commit published as every run's is, with the run's ``provenance`` in its metadata; kerchunk
    references written whole)."""
    target = references_at(run.target_url, run.target_format)
    vds = combine_references(recipe, refs)
    concat = recipe.concat_dim
    before = run.append_from or 0
    n_new = len({key[concat] for key, _ in refs}) if concat else len(refs)
    vds.attrs = _attrs(recipe, run, vds.attrs, before + n_new)
    if recipe.s3.public and any(p.startswith("s3://") for p in containers(vds)):
        vds.attrs[SOURCE_OPTIONS_ATTR] = recipe.s3.public  # how readers reach the sources (no credentials)
    if concat and concat in vds.coords:  # the checks a store's publish makes, before anything is written
        held = target.open_published()[concat].values if before else vds[concat].values[:0]
        check_coordinate(np.concatenate([held, vds[concat].values]), concat, run.target_url)
        if not before:
            check_no_retraction(target.held_inputs() or 0, n_new, concat, run.target_url)
    extra = target.write(vds, recipe, run, provenance, n_new)
    appended = n_new if before else 0
    return {
        "url": run.target_url,
        "references": True,
        "inputs": before + n_new,
        "appended": appended,
        **extra,
    }


def plan_reference_append(
    recipe: ReferenceRecipe, run: RunSpec, exists: Callable[[str], bool] | None = None
) -> tuple[RunSpec, list[str]]:
    """The run that references what is new: the pattern's inputs beyond those the target references,
    up to the first one the source does not have yet (found as a store's append finds it, a gap at the
    source refused). ``exists`` asks the source for a recipe URL (default: as the reference stage
    reads it). Returns the run and the URLs it adds, as :func:`forge.engine.append.plan_append` does."""
    done = references_at(run.target_url, run.target_format).held_inputs()
    if done is None:
        raise ForgeError(f"{run.target_url}: nothing to append to (build the references first)")
    concat = recipe.concat_dim
    positions = new_inputs(recipe.pattern, concat, done) if concat else []
    n = available_prefix(positions, exists or source_probe(recipe, run))
    return replace(run, append_from=done, prune=done + n), [url for urls in positions[:n] for url in urls]


def open_references(url: str, **kwargs: Any) -> xr.Dataset:
    """References as xarray opens them (lazily), reading chunks from the sources; ``kwargs`` go to
    ``xr.open_zarr``."""
    return references_at(url).open_published(**kwargs)
