"""Finding recipes: by id under ``recipes/`` or by path to a recipe directory or ``.py`` file."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from forge.errors import ForgeError, RecipeError
from forge.recipe.recipes import XarrayZarrRecipe


def recipes_dir() -> Path:
    """``$FORGE_RECIPES_DIR``, else the ``recipes/`` folder of this checkout."""
    env = os.environ.get("FORGE_RECIPES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "recipes"


@dataclass(frozen=True)
class RecipeSource:
    recipe_id: str
    path: Path  # the recipe's .py file

    @property
    def meta_path(self) -> Path:
        return self.path.parent / "meta.yaml"

    def meta(self) -> dict[str, Any]:
        if self.path.name == "recipe.py" and self.meta_path.exists():
            return yaml.safe_load(self.meta_path.read_text()) or {}
        return {}


def find_recipe(ref: str) -> RecipeSource:
    """Resolve a recipe id (``noaa-oisst``) or a path (``./my-recipe/`` or ``./my_recipe.py``)."""
    path = Path(ref)
    if path.suffix == ".py" and path.is_file():
        return RecipeSource(path.stem, path.resolve())
    if path.is_dir() and (path / "recipe.py").is_file():
        return RecipeSource(path.resolve().name, (path / "recipe.py").resolve())
    candidate = recipes_dir() / ref / "recipe.py"
    if candidate.is_file():
        return RecipeSource(ref, candidate.resolve())
    known = ", ".join(r.recipe_id for r in list_recipes()) or "none"
    raise RecipeError(
        f"no recipe {ref!r}: not a recipe file or directory, and not an id in "
        f"{recipes_dir()} (known: {known})"
    )


def list_recipes() -> list[RecipeSource]:
    root = recipes_dir()
    if not root.is_dir():
        return []
    return [
        RecipeSource(d.name, (d / "recipe.py").resolve())
        for d in sorted(root.iterdir())
        if (d / "recipe.py").is_file()
    ]


def load_recipe(ref: str) -> XarrayZarrRecipe:
    """Import a recipe module and return its module-level ``recipe``: once per process for each version
    of the file (kept workers serve many runs, and the file may change between them).

    Whatever goes wrong (a syntax error, a bad argument, a missing import) is a
    :class:`~forge.errors.RecipeError` naming the recipe file and the line.
    """
    source = find_recipe(ref)
    return _load(source, source.path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _load(source: RecipeSource, mtime_ns: int) -> XarrayZarrRecipe:
    module_name = f"forge_recipe_{source.recipe_id.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, source.path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(module_name, None)
        raise RecipeError(f"{source.path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        sys.modules.pop(module_name, None)
        line = _line_in(e, source.path)
        what = str(e) if isinstance(e, ForgeError) else f"{type(e).__name__}: {e}"
        raise RecipeError(f"{source.path}:{line}: {what}") from e
    recipe = getattr(module, "recipe", None)
    if not isinstance(recipe, XarrayZarrRecipe):
        raise RecipeError(f"{source.path} must define a module-level `recipe = XarrayZarrRecipe(...)`")
    return recipe


def _line_in(exc: BaseException, path: Path) -> int | str:
    """The line of ``path`` that the traceback of ``exc`` passed through last ("?" if none)."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return lines[-1] if lines else "?"
