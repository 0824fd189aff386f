"""Finding recipes: by id under ``recipes/``, by path to a recipe folder or ``.py`` file, or as one of
the recipes a feedstock's meta.yaml lists."""

from __future__ import annotations

import functools
import importlib.util
import io
import marshal
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

import cloudpickle
import yaml

from forge.errors import ForgeError, RecipeError
from forge.recipe.recipes import Recipe, ReferenceRecipe, XarrayZarrRecipe


def recipes_dir() -> Path:
    """``$FORGE_RECIPES_DIR``, else the ``recipes/`` folder of this checkout."""
    env = os.environ.get("FORGE_RECIPES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "recipes"


@dataclass(frozen=True)
class RecipeSource:
    """A recipe: the module that defines it and the name it has there. A feedstock's meta.yaml may list
    several (pangeo-forge's ``recipes: [{id, object: "module:name"}]``); otherwise a folder's
    ``recipe.py`` defines ``recipe``, named after the folder."""

    recipe_id: str
    path: Path  # the recipe's .py file
    attr: str = "recipe"
    listed: bool = False  # named by its folder's meta.yaml ``recipes:`` list

    @property
    def meta_path(self) -> Path:
        return self.path.parent / "meta.yaml"

    def meta(self) -> dict[str, Any]:
        if (self.path.name == "recipe.py" or self.listed) and self.meta_path.exists():
            return yaml.safe_load(self.meta_path.read_text()) or {}
        return {}

    @property
    def ref(self) -> str:
        """A reference :func:`find_recipe` resolves from anywhere: the file, or ``FOLDER/ID`` for a
        recipe its folder's meta.yaml lists."""
        return f"{self.path.parent}/{self.recipe_id}" if self.listed else str(self.path)


def listed_recipes(folder: Path) -> list[RecipeSource] | None:
    """The recipes ``folder``'s meta.yaml lists (None: it lists none)."""
    meta_path = folder / "meta.yaml"
    if not meta_path.is_file():
        return None
    try:
        meta = yaml.safe_load(meta_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{meta_path}: not YAML: {e}") from None
    entries = meta.get("recipes") if isinstance(meta, dict) else None
    if not entries:
        return None
    found = []
    for entry in entries:
        module, _, attr = str(entry.get("object", "")).partition(":")
        if not entry.get("id") or not module or not attr:
            raise RecipeError(f'{meta_path}: each of recipes: needs an id and an object "module:name"')
        path = (folder / f"{module.replace('.', '/')}.py").resolve()
        found.append(RecipeSource(str(entry["id"]), path, attr, listed=True))
    return found


def _in_folder(folder: Path, recipe_id: str | None = None) -> RecipeSource | None:
    """The recipe of ``folder`` (``recipe_id``: the one its meta.yaml lists under that id)."""
    listed = listed_recipes(folder)
    if listed is not None:
        if recipe_id is not None:
            return next((s for s in listed if s.recipe_id == recipe_id), None)
        if len(listed) > 1:
            ids = ", ".join(s.recipe_id for s in listed)
            example = f"{folder}/{listed[0].recipe_id}"
            raise RecipeError(f"{folder}/meta.yaml lists several recipes ({ids}): name one, e.g. {example}")
        return listed[0]
    if recipe_id is None and (folder / "recipe.py").is_file():
        return RecipeSource(folder.resolve().name, (folder / "recipe.py").resolve())
    return None


def find_recipe(ref: str) -> RecipeSource:
    """Resolve a recipe id (``noaa-oisst``), a folder (``./my-recipe/``, or a feedstock whose meta.yaml
    lists one recipe), ``FOLDER/ID`` (one of the recipes a feedstock's meta.yaml lists) or a ``.py`` file."""
    path = Path(ref)
    if path.suffix == ".py" and path.is_file():
        listed = [s for s in listed_recipes(path.parent) or [] if s.path == path.resolve()]
        return listed[0] if len(listed) == 1 else RecipeSource(path.stem, path.resolve())
    if path.is_dir() and (found := _in_folder(path)):
        return found
    if path.parent.is_dir() and str(path.parent) != "." and (found := _in_folder(path.parent, path.name)):
        return found
    for source in list_recipes():
        if source.recipe_id == ref:
            return source
    known = ", ".join(r.recipe_id for r in list_recipes()) or "none"
    raise RecipeError(
        f"no recipe {ref!r}: not a recipe file or folder, and not an id in {recipes_dir()} (known: {known})"
    )


def list_recipes() -> list[RecipeSource]:
    root = recipes_dir()
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        listed = listed_recipes(folder) if folder.is_dir() else None
        if listed is not None:
            found += listed
        elif (folder / "recipe.py").is_file():
            found.append(RecipeSource(folder.name, (folder / "recipe.py").resolve()))
    return found


def load_recipe(ref: str, fresh: bool = False) -> Recipe:
    """The recipe ``ref`` names (:func:`find_recipe`): its module imported once per process for each
    version of the file (kept workers serve many runs, and the file may change between them), or
    again (``fresh``): what it computes at import (dates up to today) may have moved on.

    Whatever goes wrong (a syntax error, a bad argument, a missing import) is a
    :class:`~forge.errors.RecipeError` naming the recipe file and the line.
    """
    source = find_recipe(ref)
    if fresh:
        _module.cache_clear()
    module = _module(source.path, source.path.stat().st_mtime_ns)
    recipe = getattr(module, source.attr, None)
    if not isinstance(recipe, XarrayZarrRecipe | ReferenceRecipe):
        raise RecipeError(
            f"{source.path} must define a module-level `{source.attr} = XarrayZarrRecipe(...)` "
            "(or ReferenceRecipe(...))"
        )
    return recipe


MODULE_PREFIX = "forge_recipe_"  # the names recipe modules are loaded under


@functools.lru_cache(maxsize=32)
def _module(path: Path, mtime_ns: int) -> ModuleType:
    module_name = MODULE_PREFIX + re.sub(r"\W", "_", f"{path.parent.name}_{path.stem}")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(module_name, None)
        raise RecipeError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        sys.modules.pop(module_name, None)
        line = _line_in(e, path)
        what = str(e) if isinstance(e, ForgeError) else f"{type(e).__name__}: {e}"
        raise RecipeError(f"{path}:{line}: {what}") from e
    return module


def _line_in(exc: BaseException, path: Path) -> int | str:
    """The line of ``path`` that the traceback of ``exc`` passed through last ("?" if none)."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return lines[-1] if lines else "?"


def frozen(ref: str, fresh: bool = False) -> bytes:
    """The recipe ``ref`` names as bytes any process can load without importing its module (cloudpickle,
    the module's own functions and data by value): code a module runs at import (crawling a server,
    searching a catalog) runs once per run, in the process that plans it, not in every worker. Every
    recipe module loaded goes by value, so a recipe made from another one (``load_recipe`` in its module,
    then ``dataclasses.replace``) travels too."""
    recipe = load_recipe(ref, fresh)
    modules = [m for name, m in list(sys.modules.items()) if name.startswith(MODULE_PREFIX)]
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        buffer = io.BytesIO()
        _KeepFilenames(buffer).dump(recipe)
        return buffer.getvalue()
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)


class _KeepFilenames(cloudpickle.Pickler):
    """cloudpickle, but code objects keep their file name (cloudpickle writes ``<dynamic-code>``), so
    errors in a worker still name the recipe's file and line. marshal is as version-bound as cloudpickle's
    own code reduction: workers run the planner's Python either way."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, CodeType):
            return marshal.loads, (marshal.dumps(obj),)
        return super().reducer_override(obj)


@functools.lru_cache(maxsize=8)
def thawed(blob: bytes) -> Recipe:
    """The recipe :func:`frozen` made (once per process for each)."""
    return cloudpickle.loads(blob)
