"""Targets that hold virtual references to the sources' chunks (a ReferenceRecipe's): kerchunk JSON, kerchunk
Parquet, and an Icechunk repository with virtual chunk containers, published as every Icechunk target
is (a run branch, the checks, compare-and-swap of ``main``, the run in the commit's metadata)."""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import fsspec
import xarray as xr

from forge.engine.attrs import REFERENCED_INPUTS_ATTR, SOURCE_OPTIONS_ATTR
from forge.engine.targets.base import Target
from forge.engine.targets.icechunk_target import IcechunkRepository
from forge.engine.virtual import agreed, concat, containers, prefix_of, source_url
from forge.publish import icechunk as repository

if TYPE_CHECKING:
    from forge.engine.types import RunSpec
    from forge.recipe.recipes import ReferenceRecipe


class ReferenceTarget(Target):
    """Where a reference run writes the inputs' references, combined: a build's, or an append's after
    those the target holds, made what readers see in one step."""

    references = True
    consolidated = False

    def held_inputs(self) -> int | None:
        """How many concat positions the target references (None: there is no target yet)."""
        try:
            ds = self.open_published()
        except FileNotFoundError:
            return None
        return int(ds.attrs.get(REFERENCED_INPUTS_ATTR, 0))

    @abstractmethod
    def write(
        self,
        vds: xr.Dataset,
        recipe: ReferenceRecipe,
        run: RunSpec,
        provenance: Mapping[str, Any],
        n_new: int,
    ) -> dict[str, Any]:
        """Publish ``vds``, the new inputs' references (``n_new`` concat positions): the target anew, or
        (``run.append_from`` set) extended by them. What the summary gains (an Icechunk snapshot)."""

    def reader_snippet(self) -> tuple[str, str]:
        return (
            "Open with forge (virtual references read from the sources)",
            f"import forge\n\nds = forge.open_references({self.url!r})",
        )


class KerchunkReferences(ReferenceTarget):
    """kerchunk references (Zarr v2 metadata and chunk locations), written whole by every run."""

    parser: ClassVar[str]  # VirtualiZarr's parser that reads them back

    def zarr_format(self) -> int:
        return 2

    def reader_snippet(self) -> tuple[str, str]:
        return (
            "Open with xarray (kerchunk references)",
            "import xarray as xr\n\n"
            'ds = xr.open_dataset("reference://", engine="zarr", consolidated=False,\n'
            f'                     storage_options={{"fo": {self.url!r}}})',
        )

    def open_published(self, **kwargs: Any) -> xr.Dataset:
        fs, path = fsspec.core.url_to_fs(self.url)
        if not fs.exists(path):
            raise FileNotFoundError(self.url)
        # zarr-python 3 reads through an async filesystem: the references', and the sources' behind them
        from zarr.storage import FsspecStore

        def opened(remote_options: Mapping[str, Any]) -> xr.Dataset:
            refs = fsspec.filesystem(
                "reference",
                fo=self.url,
                remote_options={**remote_options, "asynchronous": True},
                asynchronous=True,
            )
            store = FsspecStore(refs, read_only=True)
            return xr.open_zarr(store, consolidated=False, zarr_format=2, **kwargs)

        ds = opened({})
        # S3 sources on an endpoint of their own, or read anonymously: as the references say
        return opened(ds.attrs[SOURCE_OPTIONS_ATTR]) if SOURCE_OPTIONS_ATTR in ds.attrs else ds

    def write(
        self,
        vds: xr.Dataset,
        recipe: ReferenceRecipe,
        run: RunSpec,
        provenance: Mapping[str, Any],
        n_new: int,
    ) -> dict[str, Any]:
        # Written whole: an append's new references after those the target holds.
        if run.append_from:
            old = self._held(vds)
            attrs = agreed(old.attrs, vds.attrs)
            vds = concat([old, vds], recipe.concat_dim, "override")  # variables' attributes: the store's
            vds.attrs = attrs
        self._write_whole(vds)
        return {}

    @abstractmethod
    def _write_whole(self, vds: xr.Dataset) -> None:
        """Replace the references by all of ``vds``'s."""

    def _held(self, like: xr.Dataset) -> xr.Dataset:
        """What the references hold, as a virtual dataset like ``like``: read back (VirtualiZarr), the
        variables ``like`` holds in memory read through them."""
        from obspec_utils.registry import ObjectStoreRegistry
        from obstore.store import from_url
        from virtualizarr import open_virtual_dataset, parsers
        from virtualizarr.manifests import ManifestArray

        loaded = [n for n, v in like.variables.items() if not isinstance(v.data, ManifestArray)]
        target = source_url(self.url)
        registry = ObjectStoreRegistry({prefix_of(target): from_url(prefix_of(target))})
        parser = getattr(parsers, self.parser)(skip_variables=loaded)
        vds = open_virtual_dataset(target, registry=registry, parser=parser, loadable_variables=[])
        values = self.open_published()[loaded].load()
        return vds.assign_coords({n: values[n].variable for n in loaded if n in like.coords}).assign(
            {n: values[n].variable for n in loaded if n not in like.coords}
        )


class KerchunkJSON(KerchunkReferences):
    format = "json"
    media_type = "application/json"
    parser = "KerchunkJSONParser"

    def _write_whole(self, vds: xr.Dataset) -> None:
        """One write of the whole file: readers see the old references or the new, never a mix."""
        refs = vds.vz.to_kerchunk(format="dict")
        with fsspec.open(self.url, "w") as f:
            json.dump(refs, f)


class KerchunkParquet(KerchunkReferences):
    format = "parquet"
    media_type = "application/vnd.apache.parquet"
    parser = "KerchunkParquetParser"

    def _write_whole(self, vds: xr.Dataset) -> None:
        """A directory of record files, written by VirtualiZarr."""
        fs, path = fsspec.core.url_to_fs(self.url)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        vds.vz.to_kerchunk(self.url, format="parquet")


class IcechunkReferences(ReferenceTarget, IcechunkRepository):
    """An Icechunk repository of virtual chunks: a virtual chunk container per source store, every
    build or append one commit. Opened through forge (its containers need authorizing)."""

    def is_here(self) -> bool:
        return self.holds_references() is True

    def open_published(self, **kwargs: Any) -> xr.Dataset:
        if not repository.exists(self.url):
            raise FileNotFoundError(self.url)
        store = repository.virtual_repository(self.url).readonly_session(repository.MAIN).store
        return xr.open_zarr(store, consolidated=False, zarr_format=3, **kwargs)

    def write(
        self,
        vds: xr.Dataset,
        recipe: ReferenceRecipe,
        run: RunSpec,
        provenance: Mapping[str, Any],
        n_new: int,
    ) -> dict[str, Any]:
        import zarr
        from zarr.core.sync import sync

        append_dim = recipe.concat_dim if run.append_from else None
        repo = repository.virtual_repository(self.url, containers(vds), recipe.s3)
        txn, session = repository.begin(self.url, repo)
        if append_dim:
            before = dict(zarr.open_group(session.store, mode="r").attrs)
        else:  # a build replaces what main holds (to_icechunk writes only into an empty store)
            sync(session.store.clear())
        vds.vz.to_icechunk(session.store, append_dim=append_dim)
        if append_dim:  # to_icechunk wrote the new inputs' attributes
            zarr.open_group(session.store, mode="r+").attrs.put(agreed(before, vds.attrs))
        kind = "append" if append_dim else "build"
        held = vds.attrs[REFERENCED_INPUTS_ATTR]
        metadata = repository.run_metadata(kind, run.recipe_id, provenance, n_new, held, run.append_from)
        message = f"{run.recipe_id}: {kind}, references to {held} inputs"
        return {"snapshot": repository.commit_and_publish(txn, session, message, metadata)}
