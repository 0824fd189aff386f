"""Quick-look pictures of a dataset: a map of its newest step and a plot of its health, as PNG bytes.

Both come from small reads: the map reads one step of each main variable; the health plot reads
nothing but the statistics the store stage kept of the newest steps (``forge:health``, see
:func:`forge.publish.validate.health_summary`). Matplotlib draws without pyplot or a display, and without
any basemap: land shows as what it is in the data, missing values.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from forge.catalog.stac import cf_axes

MAX_PANELS = 4  # main variables drawn, at most
MAX_CELLS = 800  # along either axis of a map: about the pixels a panel has
MISSING_COLOUR = "#a0a0a0"  # grey: no colour map used here has it
BOUNDS_SUFFIXES = ("_bnds", "_bounds")


def main_variables(ds: xr.Dataset, limit: int = MAX_PANELS) -> list[str]:
    """The data variables worth a map: numeric, on both horizontal axes, not cell bounds."""
    axes = cf_axes(ds)
    horizontal = {name for name, axis in axes.items() if axis in ("X", "Y")}
    bounds = {str(v.attrs["bounds"]) for v in ds.variables.values() if "bounds" in v.attrs}
    found = [
        str(name)
        for name, var in ds.data_vars.items()
        if var.dtype.kind in "iuf"
        and horizontal <= set(map(str, var.dims))
        and len(horizontal) == 2
        and name not in bounds
        and not str(name).endswith(BOUNDS_SUFFIXES)
    ]
    return found[:limit]


def diverging(var: xr.DataArray, low: float, high: float) -> bool:
    """Anomalies (by name or CF attributes), or values spread about evenly on both sides of zero."""
    described = " ".join(str(var.attrs.get(k, "")) for k in ("long_name", "standard_name")) + str(var.name)
    if "anom" in described.lower():
        return True
    return low < 0 < high and min(-low, high) / max(-low, high) > 0.5


def newest_map(ds: xr.Dataset, name: str) -> tuple[xr.DataArray, str]:
    """The variable's newest step (other dimensions at their first index) as a 2-D (Y, X) array with
    longitudes from -180 to 180, and the text that names the step."""
    axes = cf_axes(ds)
    var = ds[name]
    picked = []
    for dim in var.dims:
        axis = axes.get(str(dim))
        if axis in ("X", "Y"):
            continue
        index = -1 if axis == "T" else 0
        value = var[dim].values[index] if dim in var.coords else index
        picked.append(f"{dim}={_text(value)}")
        var = var.isel({dim: index})
    (x,) = [d for d in var.dims if axes.get(str(d)) == "X"]
    (y,) = [d for d in var.dims if axes.get(str(d)) == "Y"]
    var = var.transpose(y, x).load()
    lon = var[x].values.astype(float)
    if lon.max() > 180:
        var = var.assign_coords({x: ((lon + 180) % 360) - 180}).sortby(x)
    return var.sortby(y), ", ".join(picked)


def _text(value: Any) -> str:
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="m")).removesuffix("T00:00")
    return str(value)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def quicklook_png(ds: xr.Dataset, title: str, names: Sequence[str]) -> bytes:
    """A map per variable of ``names`` at the newest step, with its units on a colour bar: a diverging
    scale about zero for anomalies, else a sequential one over the 1st to 99th percentile; missing
    values (land, for an ocean product) in grey, their share in the panel's title."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    columns = min(2, len(names))
    rows = -(-len(names) // columns)
    fig = Figure(figsize=(7 * columns, 3.4 * rows), layout="constrained")
    for n, name in enumerate(names):
        var, step = newest_map(ds, name)
        missing = float(var.isnull().mean())
        # No more cells than the panel has pixels (about 560 across): a 1/4-degree global map is drawn
        # from every other cell, at a quarter of the memory and time.
        stride = max(1, -(-max(var.shape) // MAX_CELLS))
        var = var[::stride, ::stride]
        values = np.asarray(var.values, dtype=np.float32)
        present = values[np.isfinite(values)]
        low, high = np.percentile(present, [1, 99]) if present.size else (0.0, 1.0)
        if diverging(var, float(low), float(high)):
            bound = float(max(abs(low), abs(high))) or 1.0
            cmap, low, high = "RdBu_r", -bound, bound
        else:
            cmap = "viridis"
        ax = fig.add_subplot(rows, columns, n + 1)
        x, y = (var[d].values.astype(float) for d in (var.dims[1], var.dims[0]))
        image = ax.imshow(
            np.ma.masked_invalid(values),
            origin="lower",
            extent=(x[0], x[-1], y[0], y[-1]),
            cmap=colormaps[cmap].with_extremes(bad=MISSING_COLOUR),
            vmin=low,
            vmax=high,
            interpolation="nearest",
        )
        fig.colorbar(image, ax=ax, label=var.attrs.get("units", ""), shrink=0.9)
        ax.set_title(f"{title}\n{name}: {var.attrs.get('long_name', name)}, at {step}", fontsize=10)
        ax.set_xlabel(var.dims[1])
        ax.set_ylabel(var.dims[0])
        ax.legend(
            handles=[Patch(color=MISSING_COLOUR, label=f"missing ({missing:.0%})")],
            loc="lower left",
            fontsize=8,
        )
    return _png(fig)


def health_png(
    health: Mapping[str, Mapping[str, Sequence[Any]]],
    title: str,
    units: Mapping[str, str],
    provisional: Sequence[bool] = (),
) -> bytes:
    """For each variable of ``health`` (the store's ``forge:health``, newest steps), its missing fraction
    and its spatial mean per step; steps flagged in ``provisional`` (the store's flags of its newest
    steps, as many as it has) are drawn hollow."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    names = list(health)[:MAX_PANELS]
    fig = Figure(figsize=(10, 2.4 * len(names) + 0.6), layout="constrained")
    fig.suptitle(f"{title}: the newest {max(len(h['steps']) for h in health.values())} steps", fontsize=10)
    axes = fig.subplots(len(names), 2, squeeze=False)
    for row, name in zip(axes, names, strict=True):
        record = health[name]
        try:
            x = pd.to_datetime(list(record["steps"]))
        except (ValueError, TypeError):
            x = np.arange(len(record["steps"]))
        flags = np.asarray(provisional, dtype=bool)[-len(record["steps"]) :]
        hollow = np.zeros(len(record["steps"]), bool)
        hollow[len(hollow) - len(flags) :] = flags
        missing = 100 * np.asarray(record["missing_fraction"], dtype=float)
        mean = np.asarray([np.nan if v is None else v for v in record["mean"]], dtype=float)
        unit = f" [{units[name]}]" if units.get(name) else ""
        for ax, values, label in (
            (row[0], missing, f"{name}: missing (%)"),
            (row[1], mean, f"{name}: mean{unit}"),
        ):
            ax.plot(x, values, color="#1f77b4", linewidth=1)
            ax.scatter(x[~hollow], values[~hollow], s=8, color="#1f77b4")
            if hollow.any():
                ax.scatter(x[hollow], values[hollow], s=14, facecolors="none", edgecolors="#d62728")
            ax.set_title(label, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.ticklabel_format(axis="y", useOffset=False)
            if isinstance(x, pd.DatetimeIndex):
                locator = AutoDateLocator()
                ax.xaxis.set_major_locator(locator)
                ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        row[0].set_ylim(0, max(1.0, float(np.nanmax(missing, initial=0)) * 1.15))
    return _png(fig)
