"""A published store summed up for people: the CLI's and the Prefect artifacts' description of it."""

from __future__ import annotations

from forge.engine.attrs import INPUTS_ATTR
from forge.engine.targets import target_at
from forge.engine.times import value_text
from forge.io.storage import Storage


def describe(url: str, concat_dim: str | None = None, target_format: str = "zarr") -> dict:
    """A summary of the published store, for the CLI and Prefect artifacts: with ``concat_dim``, the first
    and last of its values and how many inputs the store holds along it."""
    ds = target_at(url, target_format).open_published()
    stored = Storage(url).total_size()
    summary = {
        "url": url,
        "repr": repr(ds),
        "nbytes": int(ds.nbytes),
        "stored_bytes": int(stored),
        "sizes": {str(k): int(v) for k, v in ds.sizes.items()},
    }
    if concat_dim in ds.coords and ds.sizes[concat_dim]:
        values = ds[concat_dim].values
        summary["range"] = [value_text(values[0]), value_text(values[-1])]
        summary["inputs_held"] = ds.attrs.get(INPUTS_ATTR)
    return summary
