from __future__ import annotations

from forge.catalog.catalog import publish_catalog
from forge.engine.types import RunSpec
from tasks.common import stage


@stage(name="publish-catalog", retries=2, retry_delay_seconds=10)
def update_catalog(run: RunSpec) -> str:
    """The run's recipe in the STAC catalog of its target root (after the store is published). Returns
    the catalog's URL."""
    return publish_catalog(run)
