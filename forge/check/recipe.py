"""``forge check RECIPE``: meta.yaml against its schema, the recipe loads, a pruned build into a temporary
target (the local runner: no server, no cluster), and CF checks of the store it made. Everything wrong
is reported at once; only errors fail the check."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import xarray as xr
import yaml

from forge.catalog.catalog import open_published
from forge.check.cf import check_cf
from forge.check.layout import layout_warnings
from forge.engine.stages import run_spec_for
from forge.errors import ForgeError
from forge.io.secrets import Lookup, env_lookup
from forge.io.urls import join
from forge.recipe.loading import find_recipe, load_recipe
from forge.recipe.meta import problems
from forge.recipe.recipes import ReferenceRecipe
from forge.run import run_locally


@dataclass
class Report:
    recipe: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)  # the steps that ran clean
    skipped: list[str] = field(default_factory=list)  # the steps that could not run, and why

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        """Warnings, then errors, then the verdict: what went wrong ends the output."""
        out = [f"ok: {step}" for step in self.passed] + [f"skipped: {step}" for step in self.skipped]
        out += [f"warning: {w}" for w in self.warnings] + [f"error: {e}" for e in self.errors]
        n, w = len(self.errors), len(self.warnings)
        verdict = "passed" if self.ok else f"failed with {n} error{'s' * (n != 1)}"
        return [*out, f"forge check {self.recipe}: {verdict} ({w} warning{'s' * (w != 1)})"]


def check_meta(meta_path: Path, report: Report) -> bool:
    """meta.yaml against its schema, every problem reported; whether it is valid."""
    if not meta_path.exists():
        report.errors.append(f"meta.yaml: missing (expected at {meta_path})")
        return False
    try:
        meta = yaml.safe_load(meta_path.read_text())
    except yaml.YAMLError as e:
        report.errors.append(f"meta.yaml: not YAML: {e}")
        return False
    found = problems(meta)
    report.errors += [f"meta.yaml: {p}" for p in found]
    if not found:
        report.passed.append("meta.yaml")
    return not found


def store_layout(raw: xr.Dataset, url: str, target_format: str) -> list[str]:
    """Chunk and shard sizes of the data variables against the guidance (:mod:`forge.check.layout`),
    compressed sizes estimated from what the pruned build stored (on Zarr targets)."""
    found = []
    for name, var in raw.data_vars.items():
        chunks = var.encoding.get("chunks")
        if not chunks or var.ndim < 2:
            continue
        ratio = None
        if target_format == "zarr" and var.nbytes:
            fs, path = fsspec.core.url_to_fs(join(url, str(name)))
            ratio = min(1.0, fs.du(path) / var.nbytes)  # tiny arrays: their overhead is no ratio
        found += layout_warnings(str(name), chunks, var.encoding.get("shards"), var.dtype.itemsize, ratio)
    return found


def check_recipe(
    ref: str,
    prune: int = 2,
    url_rewrites: Mapping[str, str] | None = None,
    lookup: Lookup = env_lookup,
    work: str | None = None,
) -> Report:
    """Check the recipe ``ref`` (an id or a path); the pruned build goes under ``work`` (a temporary
    folder by default, removed after)."""
    report = Report(ref)
    try:
        source = find_recipe(ref)
    except ForgeError as e:
        report.errors.append(str(e))
        return report
    report.recipe = source.recipe_id
    meta_ok = check_meta(source.meta_path, report)
    try:
        recipe = load_recipe(ref)
    except ForgeError as e:
        report.errors.append(str(e))
        return report
    report.passed.append(f"the recipe loads ({len(recipe.pattern)} inputs)")
    if not meta_ok:  # the build reads its version and thresholds from meta.yaml
        report.skipped.append("the pruned build and CF checks, until meta.yaml is valid")
        return report
    with tempfile.TemporaryDirectory(prefix="forge-check-", dir=work) as tmp:
        try:
            run = run_spec_for(ref, f"{tmp}/target", f"{tmp}/cache", prune, url_rewrites)
            run_locally(recipe, run, lookup)
        except Exception as e:  # whatever the build hit is the finding
            what = str(e) if isinstance(e, ForgeError) else f"{type(e).__name__}: {e}"
            report.errors.append(f"pruned build (first {prune} inputs): {what}")
            return report
        report.passed.append(f"pruned build of the first {prune} inputs")
        references = isinstance(recipe, ReferenceRecipe)
        raw = open_published(run.target_url, run.target_format, references, decode_cf=False)
        decoded = open_published(run.target_url, run.target_format, references)
        findings = check_cf(raw, decoded)
        if not references:
            report.warnings += [f"layout: {w}" for w in store_layout(raw, run.target_url, run.target_format)]
    report.errors += [f"CF: {e}" for e in findings.errors]
    report.warnings += [f"CF: {w}" for w in findings.warnings]
    if not findings.errors:
        report.passed.append("CF checks")
    return report
