"""forge: the pure core of the recipe engine (patterns, schema, planning, reading and writing).

Nothing here imports Prefect; ``tasks/`` and ``flows/`` wrap these functions.
"""

__version__ = "0.1.0"

from forge.openers import InputError as InputError  # noqa: E402
from forge.patterns import ConcatDim as ConcatDim  # noqa: E402
from forge.patterns import FilePattern as FilePattern  # noqa: E402
from forge.patterns import Key as Key  # noqa: E402
from forge.patterns import MergeDim as MergeDim  # noqa: E402
from forge.recipe import XarrayZarrRecipe as XarrayZarrRecipe  # noqa: E402
from forge.secrets import Secret as Secret  # noqa: E402
