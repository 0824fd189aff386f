"""File patterns: the set of source URLs a recipe reads, indexed by combine dimensions.

The API follows pangeo-forge-recipes, so existing patterns port unchanged: the format function takes one
keyword argument per dimension, ``ConcatDim`` concatenates files along a dimension and ``MergeDim`` merges
files that hold different variables. A second ``ConcatDim`` stacks files along another dimension (ensemble
members, tiles): the first is the one the store grows along. Keys are generated lazily: a pattern over
225,000 keys costs nothing until it is iterated.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from forge.io.secrets import Secret, check_no_plain_secrets


class FileType(StrEnum):
    """The inputs' format, as pangeo-forge-recipes names it (a plain string works as well)."""

    netcdf4 = "netcdf4"
    netcdf3 = "netcdf3"
    hdf5 = "hdf5"
    zarr = "zarr"
    grib = "grib"
    opendap = "opendap"
    unknown = "unknown"  # xarray guesses the engine


@dataclass(frozen=True)
class ConcatDim:
    """Files are concatenated along dimension ``name``; ``keys`` are passed to the format function.

    ``nitems_per_file`` is the length of each file along the dimension when known; when ``None`` the
    lengths are discovered from the inputs while they are cached.
    """

    name: str
    keys: Sequence[Any]
    nitems_per_file: int | None = None

    def __post_init__(self) -> None:
        if self.nitems_per_file is not None and self.nitems_per_file < 1:
            raise ValueError(f"ConcatDim {self.name!r}: nitems_per_file must be >= 1")


@dataclass(frozen=True)
class MergeDim:
    """Files hold different variables, one file per key, merged into one dataset."""

    name: str
    keys: Sequence[Any]


CombineDim = ConcatDim | MergeDim


@dataclass(frozen=True, order=True)
class Key:
    """Immutable, hashable position of one input in a pattern: one integer index per combine dimension.

    Examples
    --------
    >>> k = Key((("time", 3), ("variable", 0)))
    >>> k["time"]
    3
    >>> k.label
    'time-3_variable-0'
    >>> k == Key.from_dict({"time": 3, "variable": 0})
    True
    """

    positions: tuple[tuple[str, int], ...]

    @classmethod
    def from_dict(cls, positions: Mapping[str, int]) -> Key:
        return cls(tuple(positions.items()))

    def __getitem__(self, dim: str) -> int:
        for name, pos in self.positions:
            if name == dim:
                return pos
        raise KeyError(dim)

    def replace(self, **positions: int) -> Key:
        return Key(tuple((n, positions.get(n, p)) for n, p in self.positions))

    @property
    def label(self) -> str:
        return "_".join(f"{n}-{p}" for n, p in self.positions)

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class FilePattern:
    """A format function over the product of combine dimensions.

    Parameters
    ----------
    format_function
        Called with one keyword argument per dimension (the key at that position); returns a URL.
    *combine_dims
        Any number of :class:`MergeDim` and one or two :class:`ConcatDim`. The first ConcatDim is the
        one the write plan cuts into chunks and appends extend; files are stacked whole along a second
        one (its target chunks must divide each file's length along it).
    fsspec_open_kwargs
        Options for opening sources (``auth=(user, Secret("PASSWORD_VAR"))``, ``headers=...``).
        Secret values must be given as :class:`~forge.io.secrets.Secret` names, never as plain strings.
    query_string_secrets
        Query parameter name -> secret name, appended to each URL when it is fetched. The URL as written in
        the recipe, the cache path, logs and store attributes never contain the value.
    file_type
        One of the types in :mod:`forge.io.openers` (``netcdf4``, ``hdf5``, ``netcdf3``, ``zarr``, ``grib``,
        ``opendap``: DAP2 URLs read in place by netCDF-C, a slice at a time).
    is_opendap
        pangeo-forge 0.9's way of saying ``file_type="opendap"``.
    trusted_redirect_hosts
        Hosts that may receive the credentials when a source redirects there (a login server). By
        default credentials go only to the origin (scheme, host, port) of the URL requested, and are
        dropped on a redirect elsewhere (a signed object-store URL needs none).
    provisional
        A second format function, for the provisional file of a key (OISST's ``_preliminary`` days,
        ERA5T): a key is stored from its final file where that exists, else from its provisional one,
        and flagged in the store's ``provisional`` coordinate; every append first replaces the
        provisional steps whose final file has appeared.
    """

    format_function: Callable[..., str]
    combine_dims: tuple[CombineDim, ...]
    fsspec_open_kwargs: Mapping[str, Any] = field(default_factory=dict)
    query_string_secrets: Mapping[str, str] = field(default_factory=dict)
    file_type: str = "netcdf4"
    trusted_redirect_hosts: tuple[str, ...] = ()
    provisional: Callable[..., str] | None = None

    def __init__(
        self,
        format_function: Callable[..., str],
        *combine_dims: CombineDim,
        fsspec_open_kwargs: Mapping[str, Any] | None = None,
        query_string_secrets: Mapping[str, str] | None = None,
        file_type: str = "netcdf4",
        trusted_redirect_hosts: Sequence[str] = (),
        is_opendap: bool = False,
        provisional: Callable[..., str] | None = None,
    ) -> None:
        names = [d.name for d in combine_dims]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate combine dimension names: {names}")
        if sum(isinstance(d, ConcatDim) for d in combine_dims) > 2:
            raise ValueError(
                "a FilePattern supports at most two ConcatDims (one to grow along, one to stack files "
                "along) and any number of MergeDims"
            )
        params = inspect.signature(format_function).parameters
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        missing = [n for n in names if n not in params and not has_var_kw]
        if missing:
            raise ValueError(f"format function {format_function.__name__} has no argument(s) {missing}")
        open_kwargs = dict(fsspec_open_kwargs or {})
        check_no_plain_secrets(open_kwargs)
        secrets = dict(query_string_secrets or {})
        for param, name in secrets.items():
            if not isinstance(name, str | Secret):
                raise TypeError(f"query_string_secrets[{param!r}] must be a secret name")
        object.__setattr__(self, "format_function", format_function)
        object.__setattr__(self, "combine_dims", tuple(combine_dims))
        object.__setattr__(self, "fsspec_open_kwargs", open_kwargs)
        object.__setattr__(
            self,
            "query_string_secrets",
            {k: v.name if isinstance(v, Secret) else v for k, v in secrets.items()},
        )
        if is_opendap:  # pangeo-forge 0.9's spelling of file_type="opendap"
            file_type = FileType.opendap
        object.__setattr__(self, "file_type", str(file_type))  # a FileType is stored by its name
        object.__setattr__(self, "trusted_redirect_hosts", tuple(trusted_redirect_hosts))
        if provisional is not None and not callable(provisional):
            raise TypeError(f"provisional must be a format function like {format_function.__name__}")
        object.__setattr__(self, "provisional", provisional)

    # -- structure ---------------------------------------------------------------------------------
    @property
    def dims(self) -> dict[str, int]:
        return {d.name: len(d.keys) for d in self.combine_dims}

    @property
    def concat_dim(self) -> ConcatDim | None:
        """The dimension the store is built and appended along: the first ConcatDim."""
        return next((d for d in self.combine_dims if isinstance(d, ConcatDim)), None)

    @property
    def stack_dim(self) -> ConcatDim | None:
        """A second ConcatDim, along which files are stacked whole (None: there is none)."""
        return next(
            itertools.islice((d for d in self.combine_dims if isinstance(d, ConcatDim)), 1, None), None
        )

    @property
    def merge_dims(self) -> tuple[MergeDim, ...]:
        return tuple(d for d in self.combine_dims if isinstance(d, MergeDim))

    def __len__(self) -> int:
        return math.prod(self.dims.values())

    # -- keys and urls -----------------------------------------------------------------------------
    def keys(self) -> Iterator[Key]:
        """Keys in order (the concat dimension varies slowest when it comes first), generated lazily."""
        names = [d.name for d in self.combine_dims]
        for combo in itertools.product(*(range(len(d.keys)) for d in self.combine_dims)):
            yield Key(tuple(zip(names, combo, strict=True)))

    def __getitem__(self, key: Key) -> str:
        kwargs = {d.name: d.keys[key[d.name]] for d in self.combine_dims}
        return self.format_function(**kwargs)

    def provisional_url(self, key: Key) -> str | None:
        """The provisional file of ``key`` (None: the pattern has none)."""
        if self.provisional is None:
            return None
        return self.provisional(**{d.name: d.keys[key[d.name]] for d in self.combine_dims})

    def items(self) -> Iterator[tuple[Key, str]]:
        for key in self.keys():
            yield key, self[key]

    def __iter__(self) -> Iterator[Key]:
        return self.keys()

    def prune(self, nkeep: int = 2) -> FilePattern:
        """A copy keeping the first ``nkeep`` keys of the concat dimension (all merge and stack keys are
        kept)."""
        if nkeep < 1:
            raise ValueError("prune: nkeep must be >= 1")
        first = self.concat_dim
        dims = tuple(
            ConcatDim(d.name, list(d.keys[:nkeep]), d.nitems_per_file) if d is first else d
            for d in self.combine_dims
        )
        return FilePattern(
            self.format_function,
            *dims,
            fsspec_open_kwargs=self.fsspec_open_kwargs,
            query_string_secrets=self.query_string_secrets,
            file_type=self.file_type,
            trusted_redirect_hosts=self.trusted_redirect_hosts,
            provisional=self.provisional,
        )

    def sha256(self) -> str:
        """A digest of every URL and the pattern's structure (no secret values: the pattern holds none)."""
        h = hashlib.sha256()
        h.update(repr((self.dims, self.file_type, sorted(self.query_string_secrets))).encode())
        for key, url in self.items():
            h.update(f"{key.label}={url}\n".encode())
            if self.provisional is not None:
                h.update(f"{key.label}~{self.provisional_url(key)}\n".encode())
        return h.hexdigest()


def pattern_from_file_sequence(
    file_list: Sequence[str], concat_dim: str, nitems_per_file: int | None = None, **kwargs: Any
) -> FilePattern:
    """A pattern over a list of URLs concatenated along ``concat_dim``, as in pangeo-forge-recipes
    (``kwargs``: those of :class:`FilePattern`, e.g. ``file_type``)."""
    urls = list(file_list)

    def url_at(**position: int) -> str:
        return urls[position[concat_dim]]

    return FilePattern(url_at, ConcatDim(concat_dim, list(range(len(urls))), nitems_per_file), **kwargs)


def rewrite_url(url: str, rewrites: Sequence[tuple[str, str]]) -> str:
    """Apply the first matching ``(from_prefix, to_prefix)`` rewrite (a mirror or a local replica)."""
    for old, new in rewrites:
        if url.startswith(old):
            return new + url[len(old) :]
    return url


def parse_rewrites(specs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Parse ``FROM=TO`` strings as given on the command line."""
    out = []
    for spec in specs:
        old, sep, new = spec.partition("=")
        if not sep or not old:
            raise ValueError(f"--url-rewrite expects FROM=TO, got {spec!r}")
        out.append((old, new))
    return tuple(out)
