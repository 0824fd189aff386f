"""``forge port PATH``: a recipe module, or a whole feedstock folder (its meta.yaml and every module in
it), rewritten for forge. Nothing is written over the source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from forge.port.rewrite import Note, Ported, port_source

BAKERIES = ("local", "gcp", "aws", "azure")


@dataclass
class PortedFile:
    source: Path
    written: Path
    notes: list[Note]

    @property
    def untranslated(self) -> list[Note]:
        return [n for n in self.notes if not n.translated]


def port_meta(text: str) -> tuple[str, list[Note]]:
    """A feedstock's meta.yaml: pangeo-forge's fields are forge's; a bakery forge does not know becomes
    ``local``."""
    meta = yaml.safe_load(text) or {}
    notes = []
    bakery = (meta.get("bakery") or {}).get("id")
    if bakery is not None and bakery not in BAKERIES:
        meta["bakery"] = {"id": "local"}
        notes.append(Note(0, f"bakery {bakery!r} -> 'local' (forge's bakeries: {', '.join(BAKERIES)})"))
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True), notes


def feedstock_folder(path: Path) -> Path:
    """pangeo-forge feedstocks keep their recipes in ``feedstock/``."""
    inner = path / "feedstock"
    return inner if not (path / "meta.yaml").exists() and (inner / "meta.yaml").exists() else path


def port_path(source: Path, out: Path) -> list[PortedFile]:
    """Port ``source`` (a ``.py`` file, or a feedstock folder) to ``out`` (a file, or a folder)."""
    if source.is_file():
        written = out / source.name if out.is_dir() else out
        return [_port_file(source, written)]
    folder = feedstock_folder(source)
    out.mkdir(parents=True, exist_ok=True)
    ported = []
    meta = folder / "meta.yaml"
    if meta.exists():
        text, notes = port_meta(meta.read_text())
        (out / "meta.yaml").write_text(text)
        ported.append(PortedFile(meta, out / "meta.yaml", notes))
    for module in sorted(folder.glob("*.py")):
        ported.append(_port_file(module, out / module.name))
    return ported


def _port_file(source: Path, written: Path) -> PortedFile:
    result: Ported = port_source(source.read_text())
    written.parent.mkdir(parents=True, exist_ok=True)
    header = [f"# Ported from pangeo-forge-recipes by `forge port` ({source.name})."]
    header += [f"# forge port: {note}" for note in result.untranslated]
    written.write_text("\n".join(header) + "\n" + result.code)
    return PortedFile(source, written, result.notes)
