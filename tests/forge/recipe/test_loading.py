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


def test_a_recipe_made_from_another_travels_to_processes_that_never_loaded_either(tmp_path: Path):
    """Workers thaw the frozen recipe without importing its module, nor the module it loaded."""
    import subprocess
    import sys

    from forge.recipe.loading import frozen

    base = tmp_path / "base" / "recipe.py"
    base.parent.mkdir()
    base.write_text(
        "from forge import ConcatDim, FilePattern, XarrayZarrRecipe\n\n"
        "def url(time):\n    return f'https://example.org/{time}.nc'\n\n"
        "recipe = XarrayZarrRecipe(FilePattern(url, ConcatDim('time', [1, 2])))\n"
    )
    variant = tmp_path / "variant" / "recipe.py"
    variant.parent.mkdir()
    variant.write_text(
        "import dataclasses\nfrom forge.recipe.loading import load_recipe\n\n"
        f"recipe = dataclasses.replace(load_recipe({str(base.parent)!r}), target_chunks={{'time': 2}})\n"
    )
    (tmp_path / "blob").write_bytes(frozen(str(variant.parent)))
    check = (
        "import cloudpickle, sys; r = cloudpickle.loads(open(sys.argv[1], 'rb').read()); "
        "print([u for _, u in r.pattern.items()], dict(r.target_chunks))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(tmp_path / "blob")], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "['https://example.org/1.nc', 'https://example.org/2.nc'] {'time': 2}", (
        done.stderr[-2000:]
    )
