"""The static STAC catalog of a target root: written after every build or append, and read to open datasets.

``{target_root}/catalog.json`` links to one ``{recipe_id}/collection.json`` per recipe; a versioned
recipe's Collection links to one Item per major version, ``{recipe_id}/{recipe_id}-v{N}.json``. All links
are relative, so the catalog moves with its stores (local disk or object storage).

A recipe's Collection and Items are made again, whole, from its stores and its meta.yaml each time: a
run writes only its own recipe's files. The root catalog is made from a listing of the collections, and
made again until a listing after the write agrees with it, so two recipes finishing at once cannot lose
each other's link (each writes its collection before it lists).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pystac
import xarray as xr

from forge.catalog.page import Entry, catalog_page, open_snippets
from forge.catalog.pictures import health_png, main_variables, quicklook_png
from forge.catalog.stac import StoreInfo, collection_for, item_for
from forge.engine.attrs import COMPLETE_ATTR
from forge.engine.targets import KINDS, Target, target_at, target_found
from forge.engine.types import RunSpec
from forge.errors import RecipeError
from forge.events.staleness import describe as freshness
from forge.io.storage import Storage
from forge.io.urls import join
from forge.publish.validate import HEALTH_ATTR
from forge.recipe.loading import find_recipe
from forge.recipe.meta import major_of

CATALOG = "catalog.json"
PAGE = "index.html"
QUICKLOOK = "quicklook.png"
HEALTH_PLOT = "health.png"
COLLECTION = "collection.json"
FORMATS = tuple(dict.fromkeys(kind.format for kind in KINDS))
logger = logging.getLogger(__name__)
NOTHING_TO_DRAW = {
    "thumbnail": "no data variable on a latitude/longitude grid",
    "overview": "the store kept no statistics of its steps (references keep none)",
}
PROVENANCE = ("forge:version", "forge:fingerprint", "forge:flow_run_id", "forge:runner", "forge:updated")


class CatalogError(LookupError):
    pass


def open_published(url: str, target_format: str, references: bool = False, **kwargs: Any) -> xr.Dataset:
    """What readers of the store at ``url`` see, lazily, its chunks readable: a copy, or (``references``)
    the sources behind references. ``kwargs`` go to ``xr.open_zarr``."""
    return _opened(target_at(url, target_format, references), **kwargs)


def _asset_target(url: str, asset: Mapping[str, Any]) -> Target:
    """The target a catalog asset describes."""
    return target_at(url, asset.get("forge:format", "zarr"), bool(asset.get("forge:references")))


def recipe_stores(target_root: str, recipe_id: str) -> list[tuple[Target, str | None, xr.Dataset]]:
    """The recipe's published targets under ``target_root``, with their versions and what readers see
    of them: one per major version (``{recipe_id}/v{N}.<format>``), or the unversioned
    ``{recipe_id}.<format>``."""
    root = Storage(target_root)
    found = []
    for fmt in FORMATS:
        for path in root.glob(f"{recipe_id}/v*.{fmt}"):
            if re.fullmatch(rf"v\d+\.{fmt}", posixpath.basename(path)):
                found.append((root.url(path), fmt))
        if root.exists(f"{recipe_id}.{fmt}"):
            found.append((root.url(f"{recipe_id}.{fmt}"), fmt))
    stores = []
    for url, fmt in found:
        target = target_found(url, fmt)
        ds = _opened(target)
        if ds.attrs.get(COMPLETE_ATTR) is True:
            stores.append((target, ds.attrs.get("forge:dataset_version"), ds))
    return stores


def _opened(target: Target, **kwargs: Any) -> xr.Dataset:
    """What readers see of ``target``, without zarr's warnings about consolidated metadata."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return target.open_published(**kwargs)


def _relative(url: str, start: str) -> str:
    """``url`` relative to the folder ``start``: ./v1.zarr under it, ../demo.zarr beside it."""
    href = posixpath.relpath(url, start)
    return href if href.startswith("../") else f"./{href}"


def _store_info(target: Target, version: str | None, collection_dir: str, ds: xr.Dataset) -> StoreInfo:
    return StoreInfo(
        href=_relative(target.url, collection_dir),
        target_format=target.format,
        version=version,
        provenance={k: ds.attrs.get(k) for k in PROVENANCE},
        fields=target.asset_fields(),
        media_type=target.media_type,
        roles=tuple(target.roles),
        references=target.references,
    )


def write_recipe_entry(
    target_root: str, recipe_id: str, meta: Mapping[str, Any], links: Sequence[tuple[str, str, str]] = ()
) -> pystac.Collection:
    """Make the recipe's Collection (and Items, if versioned) from its stores and write them."""
    stores = recipe_stores(target_root, recipe_id)
    if not stores:
        raise CatalogError(f"no published store of {recipe_id!r} under {target_root}")
    root = Storage(target_root)
    collection_dir = root.url(recipe_id)
    opened = {t.url: ds for t, _, ds in stores}
    infos = {t.url: _store_info(t, v, collection_dir, ds) for t, v, ds in stores}
    versioned = [i for i in infos.values() if i.version]
    latest_url = max(infos, key=lambda u: infos[u].major or 0)
    collection = collection_for(recipe_id, meta, opened[latest_url], infos[latest_url], links)
    collection_links = [("root", f"../{CATALOG}"), ("parent", f"../{CATALOG}")]
    items = []
    if versioned:
        latest_major = max(i.major for i in versioned)
        by_major = sorted((i.major, url) for url, i in infos.items() if i.version)
        majors = [major for major, _ in by_major]
        for n, (_, url) in enumerate(by_major):
            item = item_for(recipe_id, opened[url], infos[url], latest_major)
            versions = [("latest-version", latest_major)]
            versions += [("predecessor-version", majors[n - 1])] if n > 0 else []
            versions += [("successor-version", majors[n + 1])] if n + 1 < len(majors) else []
            hrefs = [(rel, f"./{recipe_id}-v{major}.json") for rel, major in versions]
            hrefs += [
                ("collection", f"./{COLLECTION}"),
                ("parent", f"./{COLLECTION}"),
                ("root", f"../{CATALOG}"),
            ]
            for rel, href in hrefs:
                item.add_link(pystac.Link(rel, href, media_type=pystac.MediaType.JSON))
            item.collection_id = recipe_id
            items.append(item)
            collection_links.append(("item", f"./{item.id}.json"))
    for rel, href in collection_links:
        collection.add_link(pystac.Link(rel, href, media_type=pystac.MediaType.JSON))
    # Without dask, a step is read as one (not its whole chunk of steps, decoded): small reads
    latest = next(t for t, _, _ in stores if t.url == latest_url)
    add_pictures(collection, root, recipe_id, _opened(latest, chunks=None))
    for item in items:
        root.write_text(f"{recipe_id}/{item.id}.json", _dump(item))
    root.write_text(f"{recipe_id}/{COLLECTION}", _dump(collection))
    return collection


def add_pictures(collection: pystac.Collection, root: Storage, recipe_id: str, ds: xr.Dataset) -> None:
    """Draw the dataset's quick look (its newest step) and health plot (its newest steps' statistics)
    beside its collection.json, as its ``thumbnail`` and ``overview`` assets. Drawing never fails a
    run: a picture that cannot be drawn is logged, deleted if an older one is there, and named in the
    collection's ``forge:missing_pictures`` (the catalog page says so)."""
    title = collection.title or recipe_id
    names = main_variables(ds)
    kept = ds.attrs.get(HEALTH_ATTR) or {}
    health = {n: kept[n] for n in names if n in kept} or kept
    # a store of provisional and final steps flags the provisional ones along its concat dimension
    provisional = ds["provisional"].values if "provisional" in ds.coords else ()
    drawings = {
        "thumbnail": (
            QUICKLOOK,
            f"Quick look: {', '.join(names)} at the newest step",
            f"Maps of {', '.join(names)} of {title} at the newest step; grey marks missing values",
            lambda: quicklook_png(ds, title, names),
            names,
        ),
        "overview": (
            HEALTH_PLOT,
            "Health: missing values and mean of the newest steps",
            f"Plots of the missing fraction and the spatial mean of {', '.join(health)} of {title} per step",
            lambda: health_png(health, title, {n: ds[n].attrs.get("units", "") for n in health}, provisional),
            health,
        ),
    }
    missing = {}
    for key, (name, asset_title, alt, draw, subject) in drawings.items():
        path = f"{recipe_id}/{name}"
        try:
            if not subject:
                raise LookupError(NOTHING_TO_DRAW[key])
            root.write_bytes(path, draw())
        except Exception as e:  # noqa: BLE001 (a picture is never worth a failed run)
            logger.warning("%s: no %s image (%s: %s)", recipe_id, key, type(e).__name__, e)
            root.delete(path)  # not an older picture in its place
            missing[key] = str(e) if isinstance(e, LookupError) else f"{type(e).__name__}: {e}"
            continue
        collection.add_asset(
            key,
            pystac.Asset(
                href=f"./{name}",
                title=asset_title,
                description=alt,
                media_type=pystac.MediaType.PNG,
                roles=[key],
            ),
        )
    if missing:
        collection.extra_fields["forge:missing_pictures"] = missing


def _dump(obj: pystac.STACObject) -> str:
    return json.dumps(obj.to_dict(include_self_link=False, transform_hrefs=False), indent=2)


def write_root(target_root: str, title: str = "forge datasets") -> list[str]:
    """The root catalog, from the collections present; written again until a listing after the write
    agrees with it (another recipe may be adding its own). Returns the recipe ids it links to."""
    root = Storage(target_root)
    written: list[str] | None = None
    while True:
        ids = sorted(posixpath.dirname(p).split("/")[-1] for p in root.glob(f"*/{COLLECTION}"))
        if ids == written:
            return ids
        catalog = pystac.Catalog(id="forge", description="Datasets built by forge recipes", title=title)
        catalog.add_link(pystac.Link("root", f"./{CATALOG}", media_type=pystac.MediaType.JSON))
        for recipe_id in ids:
            catalog.add_link(
                pystac.Link(
                    "child", f"./{recipe_id}/{COLLECTION}", media_type=pystac.MediaType.JSON, title=recipe_id
                )
            )
        root.write_text(CATALOG, _dump(catalog))
        written = ids


def update_catalog(
    target_root: str, recipe_id: str, meta: Mapping[str, Any], links: Sequence[tuple[str, str, str]] = ()
) -> str:
    """After a build or append: the recipe's entry, then the root. Returns the catalog's URL."""
    write_recipe_entry(target_root, recipe_id, meta, links)
    write_root(target_root)
    write_page(target_root)
    return join(target_root, CATALOG)


def publish_catalog(run: RunSpec) -> str:
    """After a build or append: the run's recipe in the catalog of its target root, described from
    its meta.yaml and linked to its source. Returns the catalog's URL."""
    meta: dict[str, Any] = {}
    links: list[tuple[str, str, str]] = []
    try:
        source = find_recipe(run.recipe)
    except RecipeError:  # a recipe object run directly (the local runner in tests): no meta.yaml
        source = None
    if source is not None:
        meta = source.meta()
        links.append(("via", source.path.as_uri(), "the recipe"))
        if source.meta_path.exists():
            links.append(("describedby", source.meta_path.as_uri(), "meta.yaml"))
    return update_catalog(run.target_root, run.recipe_id, meta, links)


def write_page(target_root: str) -> str:
    """``index.html`` beside ``catalog.json``: every dataset the catalog lists, with its pictures and
    snippets that open it. Returns its URL."""
    entries = []
    for url, doc in collections(target_root):
        store_url, asset = find(target_root, doc["id"])
        items = [item for _, item in _linked(url, doc, "item")]
        folder = posixpath.relpath(posixpath.dirname(url), target_root.rstrip("/")) + "/"
        target = _asset_target(store_url, asset)
        snippets = open_snippets(doc["id"], target_root, target.reader_snippet())
        entries.append(Entry(doc, folder, items, snippets))
    title = read_json(_root_url(target_root)).get("title") or "forge datasets"
    Storage(target_root).write_text(PAGE, catalog_page(title, entries))
    return join(target_root, PAGE)


def read_json(url: str) -> dict[str, Any]:
    text = Storage(posixpath.dirname(url)).read_text(posixpath.basename(url))
    if text is None:
        raise CatalogError(f"no STAC document at {url}")
    return json.loads(text)


def _root_url(catalog: str) -> str:
    return catalog if catalog.endswith(".json") else join(catalog, CATALOG)


def resolve(base: str, href: str) -> str:
    """``href`` (relative, or a URL) against the folder ``base`` (a path or a URL such as s3://b/p)."""
    if "://" in href:
        return href
    scheme, sep, path = join(base, href).rpartition("://")
    return scheme + sep + posixpath.normpath(path)


def _linked(url: str, doc: Mapping[str, Any], rel: str) -> list[tuple[str, dict[str, Any]]]:
    """(URL, document) of each link of ``doc`` (found at ``url``) with relation ``rel``."""
    base = posixpath.dirname(url)
    hrefs = [resolve(base, link["href"]) for link in doc.get("links", []) if link["rel"] == rel]
    return [(href, read_json(href)) for href in hrefs]


def collections(catalog: str) -> list[tuple[str, dict[str, Any]]]:
    """(URL, document) of each Collection the catalog at ``catalog`` (its catalog.json, or the target
    root) links to."""
    root_url = _root_url(catalog)
    return _linked(root_url, read_json(root_url), "child")


def find(catalog: str, recipe_id: str, version: str | None = None) -> tuple[str, dict[str, Any]]:
    """The URL of a recipe's store and its STAC asset: the latest, or that of ``version`` ("1", a
    major; or "1.1", which must be what that major holds)."""
    found = next(((url, doc) for url, doc in collections(catalog) if doc["id"] == recipe_id), None)
    if found is None:
        raise CatalogError(f"{recipe_id!r} is not in the catalog {_root_url(catalog)}")
    collection_url, entry = found
    base = posixpath.dirname(collection_url)
    if version is not None:
        items = [doc for _, doc in _linked(collection_url, entry, "item")]
        major = major_of(version) if "." in version else int(version)
        entry = next((i for i in items if major_of(i["properties"]["version"]) == major), None)
        if entry is None:
            known = sorted(i["properties"]["version"] for i in items) or "none: it is not versioned"
            raise CatalogError(f"{recipe_id} has no version {version} in the catalog (versions: {known})")
        if "." in version and entry["properties"]["version"] != version:
            held = entry["properties"]["version"]
            raise CatalogError(f"{recipe_id} version {version} is not published: major {major} holds {held}")
    asset = entry["assets"]["zarr"]
    href = asset["href"]
    return resolve(base, href), asset


def listing(catalog: str, now: dt.datetime | None = None) -> list[str]:
    """What the catalog holds, one line per dataset and one per published major version; a scheduled
    dataset's freshness too (its last update, the scheduled updates it missed)."""
    now = now or dt.datetime.now(dt.UTC)
    lines = []
    for url, doc in collections(catalog):
        base = posixpath.dirname(url)
        asset = doc["assets"]["zarr"]
        start, end = (t[:10] if t else "?" for t in doc["extent"]["temporal"]["interval"][0])
        version = f" v{doc['version']}" if doc.get("version") else ""
        lines.append(f"{doc['id']}{version}  {doc.get('title', '')}")
        lines.append(f"  {start} to {end}; {asset['forge:format']}: {resolve(base, asset['href'])}")
        if doc.get("forge:provisional_through"):
            final = (doc.get("forge:final_through") or "none")[:10]
            lines.append(f"  final data to {final}, provisional to {doc['forge:provisional_through'][:10]}")
        if (fresh := freshness(doc, now)) is not None:
            lines.append(f"  {fresh}")
        for _, item in _linked(url, doc, "item"):
            held = item["properties"]
            state = "deprecated" if held.get("deprecated") else "latest"
            store = resolve(base, item["assets"]["zarr"]["href"])
            lines.append(f"  version {held['version']} ({state}): {store}")
    return lines


def open_dataset(recipe_id: str, catalog: str = "data/target", version: str | None = None) -> xr.Dataset:
    """A dataset as the catalog publishes it: the latest version, or ``version`` ("1" or "1.1")."""
    url, asset = find(catalog, recipe_id, version)
    return _asset_target(url, asset).open_published()
