import doctest
import importlib
import pkgutil

import pytest

import forge

MODULES = [m.name for m in pkgutil.walk_packages(forge.__path__, "forge.")]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
