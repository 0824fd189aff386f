"""The catalog's web page, ``{target_root}/index.html``: one self-contained HTML page from the STAC documents.

No scripts, no external styles or fonts: it works offline and from any static host (a bucket). Its
images are the collections' own PNG assets, linked relatively, so the page moves with the catalog.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PICTURE_ROLES = ("thumbnail", "overview")

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1rem 1.5rem;
       color: #1d1d1f; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.5rem; border-top: 1px solid #ddd; padding-top: 1rem; }
nav a { margin-right: 1rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dt { font-weight: 600; color: #555; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .missing { color: #666; font-size: .9rem; }
pre { background: #f4f4f6; padding: .7rem; overflow-x: auto; border-radius: 4px; }
.deprecated { color: #a33; } .id { color: #666; font-weight: normal; font-size: 1rem; }
"""


@dataclass(frozen=True)
class Snippet:
    title: str
    code: str


@dataclass(frozen=True)
class Entry:
    """One dataset as the page shows it: its Collection, the page-relative address of its folder, its
    versions' Items, and snippets to open it."""

    collection: Mapping[str, Any]
    folder: str  # e.g. "noaa-oisst/": where its assets' relative hrefs start, from the page
    items: Sequence[Mapping[str, Any]] = ()
    snippets: Sequence[Snippet] = field(default_factory=list)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(folder: str, href: str) -> str:
    return href if urlsplit(href).scheme else folder + href.removeprefix("./")


def _pictures(entry: Entry) -> list[str]:
    doc = entry.collection
    shown = []
    for key, asset in doc.get("assets", {}).items():
        if set(asset.get("roles", [])) & set(PICTURE_ROLES):
            alt = asset.get("description") or asset.get("title") or key
            shown.append(
                f'<figure><img src="{_e(_href(entry.folder, asset["href"]))}" alt="{_e(alt)}">'
                f"<figcaption>{_e(asset.get('title', key))}</figcaption></figure>"
            )
    for key, reason in (doc.get("forge:missing_pictures") or {}).items():
        what = {"thumbnail": "quick-look map", "overview": "health plot"}.get(key, key)
        shown.append(f'<p class="missing">The {_e(what)} is missing: {_e(reason)}</p>')
    return shown


def _details(doc: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> list[str]:
    west, south, east, north = doc["extent"]["spatial"]["bbox"][0]
    start, end = (t or "open" for t in doc["extent"]["temporal"]["interval"][0])
    rows = [
        ("License", doc.get("license", "")),
        ("Time", f"{start} to {end}"),
        ("Area", f"{west:g}° to {east:g}° E, {south:g}° to {north:g}° N"),
        ("Last update", doc.get("forge:updated") or "unknown"),
    ]
    if doc.get("forge:provisional_through"):
        final = doc.get("forge:final_through") or "none yet"
        rows.insert(2, ("Final data to", f"{final}; provisional data to {doc['forge:provisional_through']}"))
    providers = ", ".join(
        f'<a href="{_e(p["url"])}">{_e(p["name"])}</a>' if p.get("url") else _e(p["name"])
        for p in doc.get("providers") or []
    )
    lines = [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows]
    if providers:
        lines.insert(1, f"<dt>Provenance</dt><dd>{providers}</dd>")
    if doc.get("keywords"):
        lines.append(f"<dt>Keywords</dt><dd>{_e(', '.join(doc['keywords']))}</dd>")
    if items:
        versions = []
        for item in sorted(items, key=lambda i: i["properties"].get("version", "")):
            held = item["properties"]
            state = '<span class="deprecated">deprecated</span>' if held.get("deprecated") else "latest"
            versions.append(f"{_e(held.get('version'))} ({state})")
        lines.append(f"<dt>Versions</dt><dd>{', '.join(versions)}</dd>")
    return ["<dl>", *lines, "</dl>"]


def catalog_page(title: str, entries: Sequence[Entry]) -> str:
    """The page: a list of the datasets, then each with its description, details, pictures and snippets."""
    nav = " ".join(f'<a href="#{_e(e.collection["id"])}">{_e(e.collection["id"])}</a>' for e in entries)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p>{len(entries)} dataset(s). STAC: <a href="catalog.json">catalog.json</a></p>',
    ]
    body.append(f"<nav>{nav}</nav>")
    for entry in entries:
        doc = entry.collection
        name = doc.get("title") or doc["id"]
        body += [
            f'<section id="{_e(doc["id"])}">',
            f'<h2>{_e(name)} <span class="id">{_e(doc["id"])}</span></h2>',
            f"<p>{_e(doc.get('description', ''))}</p>",
            *_details(doc, entry.items),
            *_pictures(entry),
            *(f"<h3>{_e(s.title)}</h3><pre><code>{_e(s.code)}</code></pre>" for s in entry.snippets),
            "</section>",
        ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">',  # no favicon request (a 404 in the console)
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )


def open_snippets(recipe_id: str, catalog_root: str, reader: tuple[str, str]) -> list[Snippet]:
    """How to open the dataset: through forge's catalog, and as its kind of target opens it (``reader``:
    a title and code)."""
    return [
        Snippet(
            "Open with forge",
            f"import forge\n\nds = forge.open_dataset({recipe_id!r}, catalog={catalog_root!r})",
        ),
        Snippet(*reader),
    ]
