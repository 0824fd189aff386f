"""STAC for a dataset, from the dataset itself and its recipe's meta.yaml: pure functions to pystac objects.

A recipe is one Collection (its id the recipe id): title, description, license, providers and keywords
from meta.yaml; extents from the data (the concat coordinate's interval, a bbox from lat/lon with 0..360
longitudes made -180..180); the datacube extension's ``cube:dimensions`` and ``cube:variables``; and an
asset for the latest store with what a reader needs to open it. A versioned recipe also gets an Item per
major version, carrying the version extension's fields and links between the versions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cf_xarray  # noqa: F401  (the .cf accessor: axes from CF attributes)
import numpy as np
import pandas as pd
import pystac
import xarray as xr
from pystac.extensions.datacube import (
    AdditionalDimension,
    DatacubeExtension,
    HorizontalSpatialDimension,
    TemporalDimension,
    Variable,
    VerticalSpatialDimension,
)
from pystac.extensions.version import VersionExtension

ZARR_MEDIA_TYPE = "application/vnd+zarr"  # the STAC Zarr best practices' media type


@dataclass(frozen=True)
class StoreInfo:
    """One published store of a recipe, as the catalog describes it."""

    href: str  # where readers find it (relative to the collection's folder when under the root)
    target_format: str  # zarr, icechunk, json or parquet
    version: str | None  # "MAJOR.MINOR"
    provenance: Mapping[str, Any]  # forge:* attributes of the store: version, fingerprint, run
    fields: Mapping[str, Any]  # what its kind tells a reader (Zarr format, xarray's open kwargs, ...)
    media_type: str = ZARR_MEDIA_TYPE
    roles: tuple[str, ...] = ("data",)
    references: bool = False  # virtual references to the sources (a ReferenceRecipe's), not a copy

    @property
    def major(self) -> int | None:
        return int(self.version.split(".")[0]) if self.version else None


def _iso(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%dT%H:%M:%SZ")


_COORDINATE_AXES = {"longitude": "X", "latitude": "Y", "vertical": "Z", "time": "T"}


def cf_axes(ds: xr.Dataset) -> dict[str, str]:
    """Dimension name -> CF axis (X, Y, Z, T), from what cf-xarray finds (``axis`` attributes, or
    longitude/latitude/vertical/time coordinates by their units and names); a datetime dimension
    coordinate is time."""
    found = {str(name): "T" for name in ds.dims if name in ds.coords and ds[name].dtype.kind == "M"}
    for key, names in [*ds.cf.coordinates.items(), *ds.cf.axes.items()]:
        axis = _COORDINATE_AXES.get(key, key)
        for name in names:
            if name in ds.dims and axis in ("X", "Y", "Z", "T"):
                found[name] = axis
    return found


def _regular_step(values: np.ndarray) -> float | None:
    if len(values) < 2:
        return None
    steps = np.diff(values.astype(float))
    return float(steps[0]) if np.allclose(steps, steps[0]) else None


def _iso_duration(values: np.ndarray) -> str | None:
    """The step of a regular time series as an ISO 8601 duration (days or seconds)."""
    if len(values) < 2 or values.dtype.kind != "M":
        return None
    steps = np.diff(values).astype("timedelta64[s]").astype(np.int64)
    if not (steps == steps[0]).all():
        return None
    seconds = int(steps[0])
    return f"P{seconds // 86400}D" if seconds % 86400 == 0 else f"PT{seconds}S"


def bbox(ds: xr.Dataset) -> list[float]:
    """[west, south, east, north] from the X/Y coordinates; longitudes in 0..360 become -180..180
    (the whole globe when they cover it)."""
    axes = {axis: name for name, axis in cf_axes(ds).items()}
    if "X" not in axes or "Y" not in axes:
        return [-180.0, -90.0, 180.0, 90.0]
    lon = np.asarray(ds[axes["X"]].values, dtype=float)
    lat = np.asarray(ds[axes["Y"]].values, dtype=float)
    west, east = float(lon.min()), float(lon.max())
    if east > 180:
        step = _regular_step(np.sort(lon)) or 0.0
        if east - west + step >= 359.999:
            west, east = -180.0, 180.0
        else:
            west, east = ((west + 180) % 360) - 180, ((east + 180) % 360) - 180
    return [west, float(lat.min()), east, float(lat.max())]


def temporal_interval(ds: xr.Dataset) -> list[dt.datetime | None]:
    times = [name for name, axis in cf_axes(ds).items() if axis == "T" and ds[name].dtype.kind == "M"]
    if not times or ds.sizes[times[0]] == 0:
        return [None, None]
    values = ds[times[0]].values
    return [pd.Timestamp(values.min()).to_pydatetime(), pd.Timestamp(values.max()).to_pydatetime()]


def datacube(ds: xr.Dataset) -> tuple[dict[str, Any], dict[str, Variable]]:
    """``cube:dimensions`` and ``cube:variables`` of ``ds``."""
    axes = cf_axes(ds)
    dimensions: dict[str, Any] = {}
    for name in ds.dims:
        axis = axes.get(str(name))
        values = ds[name].values if name in ds.coords else np.arange(ds.sizes[name])
        description = ds[name].attrs.get("long_name") if name in ds.coords else None
        props: dict[str, Any] = {"description": description} if description else {}
        if axis == "T" and values.dtype.kind == "M":
            props.update(type="temporal", extent=[_iso(values.min()), _iso(values.max())])
            if (step := _iso_duration(values)) is not None:
                props["step"] = step
            dimensions[str(name)] = TemporalDimension(props)
        elif axis in ("X", "Y"):
            props.update(type="spatial", axis=axis.lower(), reference_system=4326)
            props["extent"] = [float(values.min()), float(values.max())]
            if (step := _regular_step(values)) is not None:
                props["step"] = step
            dimensions[str(name)] = HorizontalSpatialDimension(props)
        elif axis == "Z":
            props.update(type="spatial", axis="z", extent=[float(values.min()), float(values.max())])
            if unit := ds[name].attrs.get("units"):
                props["unit"] = str(unit)
            dimensions[str(name)] = VerticalSpatialDimension(props)
        else:
            numeric = values.dtype.kind in "iuf"
            props["type"] = "other"
            if numeric:
                props["extent"] = [float(values.min()), float(values.max())]
            else:
                props["values"] = [str(v) for v in values]
            dimensions[str(name)] = AdditionalDimension(props)
    variables = {}
    for name, var in ds.variables.items():
        if name in ds.dims:
            continue
        props = {
            "dimensions": [str(d) for d in var.dims],
            "type": "data" if name in ds.data_vars else "auxiliary",
        }
        if unit := var.attrs.get("units"):
            props["unit"] = str(unit)
        if description := var.attrs.get("long_name"):
            props["description"] = str(description)
        variables[str(name)] = Variable(props)
    return dimensions, variables


def providers(meta: Mapping[str, Any]) -> list[pystac.Provider]:
    return [
        pystac.Provider(
            name=p["name"], description=p.get("description"), roles=p.get("roles"), url=p.get("url")
        )
        for p in (meta.get("provenance") or {}).get("providers") or []
    ]


def asset_for(store: StoreInfo) -> pystac.Asset:
    """The store as an asset: its media type and roles, and how to open it (as its kind says)."""
    kind = "references" if store.references else "store"
    return pystac.Asset(
        href=store.href,
        title=f"{store.target_format} {kind}" + (f", version {store.version}" if store.version else ""),
        media_type=store.media_type,
        roles=list(store.roles),
        extra_fields=dict(store.fields),
    )


def _describe_cube(obj: pystac.Collection | pystac.Item, ds: xr.Dataset) -> None:
    dimensions, variables = datacube(ds)
    DatacubeExtension.ext(obj, add_if_missing=True).apply(dimensions=dimensions, variables=variables)


def collection_for(
    recipe_id: str,
    meta: Mapping[str, Any],
    ds: xr.Dataset,
    store: StoreInfo,
    links: Sequence[tuple[str, str, str]] = (),
) -> pystac.Collection:
    """The recipe's Collection, describing its latest store ``ds`` (``links``: (rel, href, title))."""
    interval = temporal_interval(ds)
    collection = pystac.Collection(
        id=recipe_id,
        description=" ".join(str(meta.get("description") or recipe_id).split()),
        title=meta.get("title"),
        extent=pystac.Extent(pystac.SpatialExtent([bbox(ds)]), pystac.TemporalExtent([interval])),
        license=str(meta.get("license") or (meta.get("provenance") or {}).get("license") or "other"),
        keywords=list(meta.get("keywords") or []) or None,
        providers=providers(meta) or None,
        extra_fields={
            **{k: v for k, v in store.provenance.items() if v is not None},
            **_freshness(meta),
            **provisional_extent(ds),
        },
    )
    _describe_cube(collection, ds)
    collection.add_asset("zarr", asset_for(store))
    if store.version:
        VersionExtension.ext(collection, add_if_missing=True).apply(version=store.version, deprecated=False)
    for rel, href, title in links:
        collection.add_link(pystac.Link(rel, href, title=title))
    return collection


def provisional_extent(ds: xr.Dataset) -> dict[str, str]:
    """How far the final data goes, and how far the provisional data (``forge:final_through``,
    ``forge:provisional_through``), for a store with a ``provisional`` flag along its time axis."""
    if "provisional" not in ds.coords or ds["provisional"].ndim != 1:
        return {}
    (dim,) = ds["provisional"].dims
    flags = np.asarray(ds["provisional"].values, dtype=bool)
    times = ds[dim].values
    if not len(times) or times.dtype.kind != "M":
        return {}
    extent = {}
    if (~flags).any():
        extent["forge:final_through"] = _iso(times[~flags].max())
    if flags.any():
        extent["forge:provisional_through"] = _iso(times[flags].max())
    return extent


def _freshness(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What says how fresh the dataset should be: meta.yaml's update schedule and ``stale_after``."""
    update = meta.get("update") or {}
    fields: dict[str, Any] = {}
    if update.get("schedule"):
        schedule = update["schedule"]
        fields["forge:update_schedule"] = {
            "cron": schedule["cron"],
            "timezone": schedule.get("timezone", "UTC"),
        }
    if update.get("stale_after"):
        fields["forge:stale_after"] = str(update["stale_after"])
    return fields


def item_for(recipe_id: str, ds: xr.Dataset, store: StoreInfo, latest_major: int) -> pystac.Item:
    """One major version of a versioned recipe: its store, its extents and cube, its version fields."""
    west, south, east, north = bbox(ds)
    start, end = temporal_interval(ds)
    item = pystac.Item(
        id=f"{recipe_id}-v{store.major}",
        geometry={
            "type": "Polygon",
            "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]],
        },
        bbox=[west, south, east, north],
        datetime=None if start else dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        properties={"start_datetime": _iso(start), "end_datetime": _iso(end)} if start else {},
    )
    _describe_cube(item, ds)
    item.add_asset("zarr", asset_for(store))
    VersionExtension.ext(item, add_if_missing=True).apply(
        version=store.version, deprecated=store.major < latest_major
    )
    item.properties.update({k: v for k, v in store.provenance.items() if v is not None})
    return item
