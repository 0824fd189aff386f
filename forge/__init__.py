"""forge: the pure core of the recipe engine (patterns, schema, planning, reading and writing).

Nothing here imports Prefect; ``tasks/`` and ``flows/`` wrap these functions.
"""

from forge._version import __version__ as __version__
from forge.io.openers import InputError as InputError  # noqa: E402
from forge.io.secrets import Secret as Secret  # noqa: E402
from forge.recipe.patterns import ConcatDim as ConcatDim  # noqa: E402
from forge.recipe.patterns import FilePattern as FilePattern  # noqa: E402
from forge.recipe.patterns import FileType as FileType  # noqa: E402
from forge.recipe.patterns import Key as Key  # noqa: E402
from forge.recipe.patterns import MergeDim as MergeDim  # noqa: E402
from forge.recipe.patterns import pattern_from_file_sequence as pattern_from_file_sequence  # noqa: E402
from forge.recipe.recipes import ReferenceRecipe as ReferenceRecipe  # noqa: E402
from forge.recipe.recipes import XarrayZarrRecipe as XarrayZarrRecipe  # noqa: E402


def open_dataset(recipe_id: str, catalog: str = "data/target", version: str | None = None):
    """A dataset as the STAC catalog at ``catalog`` (a target root, or its catalog.json) publishes it:
    the latest version, or ``version`` (a major, "1", or "MAJOR.MINOR"). See :mod:`forge.catalog`."""
    from forge.catalog.catalog import open_dataset as _open

    return _open(recipe_id, catalog, version)


def chunks_by_budget(budget: int | str = "100MB", fixed=None):
    """A ``dynamic_chunking_fn`` by size budget: see :func:`forge.engine.chunking.chunks_by_budget`."""
    from forge.engine.chunking import chunks_by_budget as _chunks

    return _chunks(budget, fixed)


def open_references(url: str):
    """A reference store (``ReferenceRecipe``'s ``.icechunk``, ``.json`` or ``.parquet``) opened with
    xarray, its chunks read from the sources: see :mod:`forge.engine.references`."""
    from forge.engine.references import open_references as _open

    return _open(url)
