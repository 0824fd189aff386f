"""The recipe's own checks of its finished store (``tests=[fn, ...]``, pangeo-forge's ``test_ds`` steps),
run before the store is published: a check that fails fails the run and publishes nothing (but on a
Zarr append, whose new steps are in place before it is checked; an Icechunk target publishes none)."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import xarray as xr

from forge.errors import call_recipe_code

DATASET_PARAMS = ("ds", "dataset")


def wants_dataset(fn: Callable) -> bool:
    """A check whose parameter is named ``ds`` gets the opened Dataset; others get the Zarr store, as
    pangeo-forge's ``test_ds(store)`` does."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] in DATASET_PARAMS


def run_checks(checks: tuple[Callable, ...], store: Any, url: str, consolidated: bool | None) -> None:
    """Each check on ``store`` (a zarr Store at ``url``); the first that raises is a RecipeCodeError
    naming it, its line and the store."""
    for check in checks:
        arg = store
        if wants_dataset(check):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                arg = xr.open_zarr(store, consolidated=consolidated)
        with warnings.catch_warnings():  # a check opening the store before its metadata is consolidated
            warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated", RuntimeWarning)
            call_recipe_code(check, f"the check {check.__name__} of {url}", arg)
