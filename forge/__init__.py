"""forge: the pure core of the recipe engine (patterns, schema, planning, reading and writing).

Nothing here imports Prefect; ``tasks/`` and ``flows/`` wrap these functions.
"""

from forge._version import __version__ as __version__
from forge.io.openers import InputError as InputError  # noqa: E402
from forge.io.secrets import Secret as Secret  # noqa: E402
from forge.recipe.patterns import ConcatDim as ConcatDim  # noqa: E402
from forge.recipe.patterns import FilePattern as FilePattern  # noqa: E402
from forge.recipe.patterns import Key as Key  # noqa: E402
from forge.recipe.patterns import MergeDim as MergeDim  # noqa: E402
from forge.recipe.recipes import XarrayZarrRecipe as XarrayZarrRecipe  # noqa: E402


def open_dataset(recipe_id: str, catalog: str = "data/target", version: str | None = None):
    """A dataset as the STAC catalog at ``catalog`` (a target root, or its catalog.json) publishes it:
    the latest version, or ``version`` (a major, "1", or "MAJOR.MINOR"). See :mod:`forge.catalog`."""
    from forge.catalog.catalog import open_dataset as _open

    return _open(recipe_id, catalog, version)
