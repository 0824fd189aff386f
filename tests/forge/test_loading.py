"""Finding and loading recipes: load errors name the file and line, and a changed file is read again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forge.errors import RecipeError
from forge.recipe.loading import find_recipe, list_recipes, load_recipe

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


def test_a_feedstock_names_its_recipes_in_meta_yaml(tmp_path: Path, monkeypatch):
    """pangeo-forge's ``recipes: [{id, object: "module:name"}]``: several recipes in one module, ids
    from meta.yaml, found by id, by FOLDER/ID, or by the module when it defines one."""
    feedstock = tmp_path / "recipes" / "feedstock"
    feedstock.mkdir(parents=True)
    two = RECIPE.format(chunk=1) + "fine = XarrayZarrRecipe(pattern, target_chunks={'time': 2})\n"
    (feedstock / "both.py").write_text(two)
    (feedstock / "one.py").write_text(RECIPE.format(chunk=3))
    entries = [("coarse", "both:recipe"), ("fine", "both:fine"), ("single", "one:recipe")]
    (feedstock / "meta.yaml").write_text(
        "recipes:\n" + "".join(f"  - id: {i}\n    object: {o}\n" for i, o in entries)
    )
    monkeypatch.setenv("FORGE_RECIPES_DIR", str(tmp_path / "recipes"))
    assert [s.recipe_id for s in list_recipes()] == ["coarse", "fine", "single"]
    assert load_recipe("fine").target_chunks == {"time": 2}
    assert load_recipe(f"{feedstock}/coarse").target_chunks == {"time": 1}
    assert find_recipe(str(feedstock / "one.py")).recipe_id == "single"
    assert find_recipe("fine").meta()["recipes"][1]["id"] == "fine"
    with pytest.raises(RecipeError, match=r"lists several recipes \(coarse, fine, single\): name one"):
        find_recipe(str(feedstock))
