"""A recipe's ``meta.yaml``: what it may hold, checked against one documented schema, and its version.

The fields of pangeo-forge feedstocks are accepted as they are (``title``, ``description``,
``pangeo_forge_version``, ``recipes`` with ``id`` and ``object``, ``provenance`` with ``providers`` and
``license``, ``maintainers``, ``bakery``), plus this project's: ``version`` (``"MAJOR.MINOR"``),
``license`` and ``keywords`` at the top, ``update`` (schedule and triggers) and ``validation``
(thresholds checked before publishing). :func:`problems` lists every bad or missing field at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jsonschema

from forge.errors import RecipeError

_PROVIDER = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "roles": {
            "type": "array",
            "items": {"enum": ["producer", "licensor", "processor", "host"]},
        },
        "url": {"type": "string", "format": "uri"},
    },
}
_SCHEDULE = {
    "type": "object",
    "required": ["cron"],
    "properties": {"cron": {"type": "string"}, "timezone": {"type": "string"}, "active": {"type": "boolean"}},
    "additionalProperties": False,
}
_TRIGGER = {
    "type": "object",
    "required": ["prefix"],
    "properties": {"prefix": {"type": "string"}, "suffix": {"type": "string"}, "bucket": {"type": "string"}},
    "additionalProperties": False,
}
SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "forge recipe meta.yaml",
    "type": "object",
    "required": ["title", "description", "provenance", "maintainers"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "pangeo_forge_version": {"type": "string"},
        "version": {"type": "string", "pattern": r"^\d+\.\d+$"},
        "license": {"type": "string"},
        "keywords": {"type": "array", "items": {"type": "string"}},
        "recipes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "object"],
                "properties": {
                    "id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$"},
                    "object": {"type": "string", "pattern": r"^[\w.]+:[\w.]+$"},
                },
            },
        },
        "provenance": {
            "type": "object",
            "required": ["providers", "license"],
            "properties": {
                "providers": {"type": "array", "minItems": 1, "items": _PROVIDER},
                "license": {"type": "string", "minLength": 1},
            },
        },
        "maintainers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "orcid": {"type": "string"},
                    "github": {"type": "string"},
                },
            },
        },
        "bakery": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
        "update": {
            "type": "object",
            "properties": {
                "schedule": _SCHEDULE,
                "trigger": {"oneOf": [_TRIGGER, {"type": "array", "items": _TRIGGER}]},
                # no update within this long: `forge deploy` adds an automation that says so
                "stale_after": {"type": "string", "pattern": r"^\d+\s*[smhd]$"},
                # the Prefect notification block it says so through: "block-type-slug/block-name"
                "notify": {"type": "string", "pattern": r"^[a-z0-9-]+/[A-Za-z0-9_.-]+$"},
            },
            "dependencies": {"stale_after": ["notify"]},
            "additionalProperties": False,
        },
        "validation": {
            "type": "object",
            "properties": {
                "max_missing_fraction": {
                    "type": "object",
                    "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
                }
            },
            "additionalProperties": False,
        },
    },
}
# What pangeo-forge feedstocks and this project know; anything else is a typo more often than not.
KNOWN_FIELDS = set(SCHEMA["properties"])


def problems(meta: Any) -> list[str]:
    """Every bad or missing field of ``meta``, one line each (empty: it is fine)."""
    if not isinstance(meta, Mapping):
        return [f"meta.yaml must be a mapping of fields, not {type(meta).__name__}"]
    found = []
    validator = jsonschema.Draft7Validator(SCHEMA)
    for error in sorted(validator.iter_errors(dict(meta)), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(map(str, error.absolute_path)) or "(top)"
        if error.validator == "required":
            name = error.message.split("'")[1]  # "'title' is a required property"
            found.append(f"{name if where == '(top)' else f'{where}.{name}'}: missing")
        elif where == "version":
            found.append(f'version: {error.instance!r} is not "MAJOR.MINOR" (a quoted string, e.g. "1.0")')
        else:
            found.append(f"{where}: {error.message}")
    unknown = sorted(set(meta) - KNOWN_FIELDS)
    found += [f"{name}: not a meta.yaml field (known: {', '.join(sorted(KNOWN_FIELDS))})" for name in unknown]
    return found


def version_of(meta: Mapping[str, Any]) -> str | None:
    """The recipe's ``"MAJOR.MINOR"`` version, None for a recipe without one."""
    version = meta.get("version")
    if version is None:
        return None
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+", version):
        raise RecipeError(
            f'meta.yaml: version must be "MAJOR.MINOR", a quoted string such as "1.0"; got {version!r}'
        )
    return version


def major_of(version: str) -> int:
    return int(version.split(".")[0])
