import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import forge


def has_examples(name: str) -> bool:
    """Whether the module's source holds a doctest example (the others need not be imported here)."""
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin is not None and ">>> " in Path(spec.origin).read_text()


MODULES = [m.name for m in pkgutil.walk_packages(forge.__path__, "forge.") if has_examples(m.name)]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
