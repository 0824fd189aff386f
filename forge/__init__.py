"""forge: the pure core of the recipe engine (patterns, schema, planning, reading and writing).

Nothing here imports Prefect; ``tasks/`` and ``flows/`` wrap these functions.
"""

__version__ = "0.1.0"

from forge.io.openers import InputError as InputError  # noqa: E402
from forge.io.secrets import Secret as Secret  # noqa: E402
from forge.recipe.patterns import ConcatDim as ConcatDim  # noqa: E402
from forge.recipe.patterns import FilePattern as FilePattern  # noqa: E402
from forge.recipe.patterns import Key as Key  # noqa: E402
from forge.recipe.patterns import MergeDim as MergeDim  # noqa: E402
from forge.recipe.recipes import XarrayZarrRecipe as XarrayZarrRecipe  # noqa: E402
