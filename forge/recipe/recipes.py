"""What users write: an Xarray-to-Zarr recipe over a :class:`~forge.recipe.patterns.FilePattern`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Self

import xarray as xr

from forge.errors import RecipeCodeError, RecipeError, call_recipe_code
from forge.io.openers import get_opener
from forge.io.s3_options import S3Options
from forge.recipe.patterns import FilePattern

TARGET_FORMATS = ("zarr", "icechunk")
REFERENCE_FORMATS = ("icechunk", "json", "parquet")
ProcessInput = Callable[[xr.Dataset, str], xr.Dataset] | Callable[[xr.Dataset], xr.Dataset]


def _input_arity(fn: Callable) -> int:
    """How many positional arguments ``process_input`` takes: ``(ds, url)`` as here or ``(ds)`` as in
    pangeo-forge's ``process_input``; anything else is refused when the recipe is made."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return 2  # a builtin or C function: nothing to check
    for arity in (2, 1):
        try:
            signature.bind(*range(arity))
            return arity
        except TypeError:
            continue
    raise RecipeError(
        f"process_input {getattr(fn, '__name__', fn)!r}{signature} must take (ds, url) or (ds): the opened "
        "input and its URL"
    )


class _OverPattern:
    """What every recipe has: its pattern's concat dimension, and a pruned copy (a test build)."""

    pattern: FilePattern

    @property
    def concat_dim(self) -> str | None:
        concat = self.pattern.concat_dim
        return concat.name if concat else None

    @property
    def stack_dim(self) -> str | None:
        stack = self.pattern.stack_dim
        return stack.name if stack else None

    @property
    def source_options(self) -> Mapping[str, Any]:
        """fsspec's options for reading the sources (secrets by name): the pattern's."""
        return self.pattern.fsspec_open_kwargs

    def pruned(self, nkeep: int | None) -> Self:
        if nkeep is None:
            return self
        return replace(self, pattern=self.pattern.prune(nkeep))

    def copy_pruned(self, nkeep: int = 2) -> Self:
        """pangeo-forge 0.9's name for :meth:`pruned` (a recipe of the first ``nkeep`` inputs)."""
        return self.pruned(nkeep)


@dataclass(frozen=True)
class XarrayZarrRecipe(_OverPattern):
    """Concatenate and merge the pattern's inputs into one Zarr store.

    Parameters
    ----------
    pattern
        The inputs.
    target_chunks
        Chunk length per dimension in the target (-1: the whole dimension); dimensions left out are not
        split, except the concat dimension, whose default gives chunks of about 64 MiB for the largest
        variable.
    target_shards
        Zarr v3 shards of the data variables: shard length per dimension, a multiple of the chunk length
        there (dimensions left out: one chunk along the concat dimension, one shard spanning any other).
        Each shard is one object holding its chunks; every shard has exactly one writer, which writes it
        whole.
    process_input
        ``f(ds, url) -> ds`` (or ``f(ds) -> ds``), applied to every input after it is opened (decoded), as
        in pangeo-forge.
        Inputs are then re-encoded with the target's encoding, which is slower than the default path
        that copies packed values undecoded.
    xarray_open_kwargs
        Passed to ``xr.open_dataset`` for every input.
    zarr_format
        3 (default) or 2.
    target_format
        ``"zarr"`` (default): a Zarr store, ``{target_root}/{recipe_id}.zarr``, its consolidated metadata
        the commit readers see. ``"icechunk"``: an Icechunk repository, ``{recipe_id}.icechunk``, every
        build or append one commit to ``main``, made only after the data is checked
        (:mod:`forge.publish.icechunk`).
    consolidated
        Write consolidated metadata when the store is finalized.
    attrs
        Extra global attributes for the target.
    max_concurrency_per_host
        Simultaneous requests to one source server, across all workers and all runs.
    cache_batch_size, max_write_batches
        Bounds that keep the number of Prefect task runs proportional to batches, not inputs or chunks.
        A cache batch is one task run, and each costs Prefect about 0.2 s of a worker's time and 0.1 s of
        the flow's: 2,500 inputs per batch (in whole rounds of the host's limit: 16,500 inputs make 8)
        keeps that near 3% even for tiny inputs of 5 ms each (benchmarks/scale.py). A retried batch
        downloads only what it is missing.
    compressors
        Zarr codecs for the data variables, e.g. ``(zarr.codecs.BloscCodec(cname="lz4"),)``; None keeps
        Zarr's default (zstd level 0, which benchmarks/throughput.py compares with the alternatives).
    inputs_per_chunk
        pangeo-forge's: chunks of that many inputs along the concat dimension (``target_chunks`` wins).
    subset_inputs
        pangeo-forge's, accepted and not needed: the store step never holds more than one target chunk
        of one variable, and reads inputs in slabs of at most 8 MB, whatever an input's size.
    dynamic_chunking_fn, dynamic_chunking_fn_kwargs
        pangeo-forge's: ``fn(schema, **kwargs) -> {dim: chunk}``, given the target's schema as a lazy
        Dataset (no values read), instead of ``target_chunks``; ``forge.chunks_by_budget("100MB")`` is one.
    process_chunk
        pangeo-forge's: ``f(ds) -> ds`` applied to each target chunk (all variables the chunk holds along
        the concat dimension, decoded, assembled from its inputs' slices) before it is written; it must
        keep each variable's dimensions and shape. The store step then holds a whole chunk of every
        variable at once, not a slab of one.
    xarray_concat_kwargs
        Passed to ``xr.concat`` where inputs are concatenated as Datasets: when ``process_chunk`` assembles
        a chunk (otherwise each input's slice is written straight to its place in the target).
    tests
        Checks of the finished store, run before it is published: ``f(store)`` gets the Zarr store (as
        pangeo-forge's ``test_ds``), ``f(ds)`` the opened Dataset; one that raises fails the run.
    """

    pattern: FilePattern
    target_chunks: Mapping[str, int] = field(default_factory=dict)
    target_shards: Mapping[str, int] = field(default_factory=dict)
    process_input: ProcessInput | None = None
    xarray_open_kwargs: Mapping[str, Any] = field(default_factory=dict)
    zarr_format: int = 3
    target_format: str = "zarr"
    consolidated: bool = True
    attrs: Mapping[str, Any] = field(default_factory=dict)
    max_concurrency_per_host: int = 4
    cache_batch_size: int = 2500
    max_write_batches: int = 32
    compressors: tuple[Any, ...] | None = None
    inputs_per_chunk: int | None = None
    subset_inputs: Mapping[str, int] = field(default_factory=dict)
    tests: tuple[Callable[[Any], Any], ...] = ()
    dynamic_chunking_fn: Callable[..., Mapping[str, int]] | None = None
    dynamic_chunking_fn_kwargs: Mapping[str, Any] = field(default_factory=dict)
    process_chunk: Callable[[xr.Dataset], xr.Dataset] | None = None
    xarray_concat_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pattern.provisional is not None:
            concat = self.pattern.concat_dim
            if concat is None or concat.nitems_per_file is None or self.pattern.stack_dim is not None:
                raise RecipeError(
                    "provisional files need one ConcatDim with nitems_per_file given (an append finds the "
                    "steps to replace by position)"
                )
            if get_opener(self.pattern.file_type).in_place:
                raise RecipeError(
                    f"provisional files are cached, not read in place ({self.pattern.file_type})"
                )
        if self.zarr_format not in (2, 3):
            raise ValueError(f"zarr_format must be 2 or 3, not {self.zarr_format!r}")
        if self.target_format not in TARGET_FORMATS:
            raise ValueError(f"target_format must be one of {TARGET_FORMATS}, not {self.target_format!r}")
        if self.target_format == "icechunk" and self.zarr_format != 3:
            raise ValueError(
                "Icechunk repositories hold Zarr v3: use zarr_format=3 with target_format='icechunk'"
            )
        if self.max_concurrency_per_host < 1:
            raise ValueError("max_concurrency_per_host must be >= 1")
        for dim, n in self.target_chunks.items():
            if not isinstance(n, int) or (n < 1 and n != -1):
                raise ValueError(
                    f"target_chunks[{dim!r}] must be a positive integer or -1 (whole), not {n!r}"
                )
        for dim, n in self.target_shards.items():
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"target_shards[{dim!r}] must be a positive integer, not {n!r}")
        if self.target_shards and self.zarr_format != 3:
            raise ValueError("shards are a Zarr v3 codec: use zarr_format=3 with target_shards")
        if self.inputs_per_chunk is not None and (
            not isinstance(self.inputs_per_chunk, int) or self.inputs_per_chunk < 1
        ):
            raise ValueError(f"inputs_per_chunk must be a positive integer, not {self.inputs_per_chunk!r}")
        if self.dynamic_chunking_fn is not None and self.target_chunks:
            raise ValueError("give target_chunks or dynamic_chunking_fn, not both")
        object.__setattr__(self, "tests", tuple(self.tests))
        for check in self.tests:
            if not callable(check):
                raise RecipeError(f"tests must be functions of the finished store, not {check!r}")
        get_opener(self.pattern.file_type)
        if self.pattern.file_type == "opendap" and (
            self.pattern.fsspec_open_kwargs or self.pattern.query_string_secrets
        ):
            raise RecipeError(
                "OPeNDAP sources are read by netCDF-C's own client, which the recipe's credentials do not "
                "reach: give them to it in ~/.netrc and ~/.dodsrc, or fetch the files over HTTP instead"
            )
        if self.process_input is not None:
            _input_arity(self.process_input)
        if self.process_chunk is not None and not callable(self.process_chunk):
            raise RecipeError(f"process_chunk must be a function f(ds) -> ds, not {self.process_chunk!r}")
        if self.process_chunk is not None and self.pattern.stack_dim is not None:
            raise RecipeError(
                "process_chunk is not supported with a second ConcatDim: its chunks would be assembled "
                "across stacked inputs; use process_input on each input instead"
            )
        if "dim" in self.xarray_concat_kwargs:
            raise RecipeError("xarray_concat_kwargs cannot set dim: it is the pattern's ConcatDim")

    def preprocess(self, ds: xr.Dataset, url: str) -> xr.Dataset:
        """``process_input`` applied to one opened input; its failures name the input and the recipe's
        line (:class:`~forge.errors.RecipeCodeError`), and it must return a Dataset."""
        if self.process_input is None:
            return ds
        args = (ds, url) if _input_arity(self.process_input) == 2 else (ds,)
        return _dataset_from(self.process_input, "process_input", url, *args)

    def postprocess_chunk(self, ds: xr.Dataset, label: str) -> xr.Dataset:
        """``process_chunk`` applied to one assembled chunk; its failures name the chunk and the recipe's
        line, and it must return a Dataset."""
        return _dataset_from(self.process_chunk, "process_chunk", label, ds)


def _dataset_from(fn: Callable, hook: str, subject: str, *args: Any) -> xr.Dataset:
    """``fn(*args)``, a recipe hook (``process_input``, ``process_chunk``) run on ``subject`` (an input's
    URL, a chunk), which must return a Dataset."""
    out = call_recipe_code(fn, f"{hook} on {subject}", *args)
    if not isinstance(out, xr.Dataset):
        raise RecipeCodeError(f"{hook} returned {type(out).__name__} for {subject}, not a Dataset")
    return out


@dataclass(frozen=True)
class ReferenceRecipe(_OverPattern):
    """Virtual references to the pattern's inputs instead of a copy of their chunks (VirtualiZarr): the
    store says where each chunk is in which source file, readers fetch it from there. pangeo-forge's
    ``HDFReferenceRecipe`` and ``OpenWithKerchunk | WriteCombinedReference``.

    Parameters
    ----------
    pattern
        The inputs (netcdf4, hdf5 or netcdf3), referenced at their URLs after the run's rewrites; they
        must stay where they are, and be readable without credentials.
    target_format
        ``"icechunk"`` (default): an Icechunk repository, ``{recipe_id}.icechunk``, with a virtual chunk
        container per source host, every build or append one commit. ``"json"`` or ``"parquet"``:
        kerchunk references, ``{recipe_id}.json`` or ``{recipe_id}.parquet``.
    loadable_variables
        Variables copied into the store rather than referenced; default: the dimension coordinates.
    attrs
        Extra global attributes for the target.
    storage_options
        How ``s3://`` sources are read, as s3fs takes them (pangeo-forge's ``netcdf_storage_options``):
        ``anon``, ``endpoint_url`` (or ``client_kwargs={"endpoint_url": ...}``), ``region``,
        ``requester_pays``, and ``key``/``secret``/``token`` as ``Secret("NAME")``. All but the
        credentials are kept with the references, for their readers.
    max_concurrency_per_host, cache_batch_size
        As for :class:`XarrayZarrRecipe`: inputs are referenced in batches per source host.
    """

    pattern: FilePattern
    target_format: str = "icechunk"
    loadable_variables: tuple[str, ...] | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    max_concurrency_per_host: int = 4
    cache_batch_size: int = 2500

    def __post_init__(self) -> None:
        if self.target_format not in REFERENCE_FORMATS:
            raise ValueError(f"target_format must be one of {REFERENCE_FORMATS}, not {self.target_format!r}")
        if self.pattern.file_type not in ("netcdf4", "hdf5", "netcdf3"):
            raise RecipeError(
                f"references can point into netcdf4, hdf5 or netcdf3 files, not {self.pattern.file_type}"
            )
        if self.pattern.provisional is not None:
            raise RecipeError("reference recipes do not take provisional files (copy them: XarrayZarrRecipe)")
        if self.pattern.query_string_secrets or self.pattern.fsspec_open_kwargs:
            raise RecipeError(
                "a reference store is read without the recipe's credentials: its sources must be public "
                "(no fsspec_open_kwargs or query_string_secrets)"
            )
        if self.max_concurrency_per_host < 1:
            raise ValueError("max_concurrency_per_host must be >= 1")
        if self.loadable_variables is not None:
            object.__setattr__(self, "loadable_variables", tuple(self.loadable_variables))
        S3Options.from_fsspec(self.storage_options)  # refused now, not when the sources are read

    @property
    def s3(self) -> S3Options:
        return S3Options.from_fsspec(self.storage_options)

    @property
    def source_options(self) -> Mapping[str, Any]:
        """The recipe's ``storage_options``: a look at the source for an append reads S3 as they say."""
        return self.storage_options


Recipe = XarrayZarrRecipe | ReferenceRecipe
