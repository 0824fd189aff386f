"""Finding and loading recipes: load errors name the file and line, and a changed file is read again."""

from __future__ import annotations

import os
from pathlib import Path

from forge.recipe.loading import load_recipe

RECIPE = """from forge import ConcatDim, FilePattern, XarrayZarrRecipe

pattern = FilePattern(lambda time: f"https://example.org/{{time}}.nc", ConcatDim("time", [0, 1]))
recipe = XarrayZarrRecipe(pattern, target_chunks={{"time": {chunk}}})
"""


def test_a_changed_recipe_file_is_loaded_again(tmp_path: Path):
    """Kept workers serve many runs: each must see the recipe as it is now, and load it once."""
    path = tmp_path / "demo" / "recipe.py"
    path.parent.mkdir()
    path.write_text(RECIPE.format(chunk=1))
    first = load_recipe(str(path.parent))
    assert load_recipe(str(path.parent)) is first  # once per process
    path.write_text(RECIPE.format(chunk=2))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert load_recipe(str(path.parent)).target_chunks == {"time": 2}
