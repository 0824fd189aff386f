"""Staleness alerts: every run that publishes new data says so (a ``forge.recipe.updated`` event about
the recipe), and ``forge deploy`` gives each recipe whose meta.yaml has ``update: {stale_after, notify}``
a Prefect automation that notifies through that block when no such event came within the window (a
proactive trigger: it fires on what did not happen)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect.events import emit_event

from forge.events.staleness import UPDATED, duration
from forge.events.triggers import recipe_resource

AUTOMATION_PREFIX = "forge: stale "


def announce_update(recipe_id: str, summary: Mapping[str, Any]) -> None:
    """The recipe's dataset has new data (a build, or an append that added something)."""
    payload = {"url": summary.get("url"), "appended": summary.get("appended", 0)}
    if summary.get("range"):
        payload["last"] = summary["range"][-1]
    emit_event(event=UPDATED, resource=recipe_resource(recipe_id), payload=payload)


def staleness_automation(recipe_id: str, meta: Mapping[str, Any], block_document_id: Any) -> Any:
    """The automation for a recipe with ``update.stale_after``: no ``forge.recipe.updated`` about it
    within that long sends a notification through the block ``block_document_id``."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    update = meta["update"]
    window = duration(update["stale_after"])
    title = meta.get("title", recipe_id)
    return Automation(
        name=f"{AUTOMATION_PREFIX}{recipe_id}",
        description=f"{title}: no update published within {update['stale_after']}",
        trigger=EventTrigger(
            match={"prefect.resource.id": recipe_resource(recipe_id)["prefect.resource.id"]},
            expect={UPDATED},
            posture=Posture.Proactive,
            threshold=1,
            within=window,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject=f"forge: {recipe_id} is stale",
                body=(
                    f"{title} ({recipe_id}) has had no update published in the last {update['stale_after']}. "
                    "Look at its append deployment's runs in the Prefect UI."
                ),
            )
        ],
    )


def install_staleness_automations(recipes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Create (or replace) the staleness automation of every recipe whose meta.yaml asks for one, and
    delete those of recipes that no longer do. Returns the names created."""
    from prefect.blocks.core import Block
    from prefect.client.orchestration import get_client

    wanted = {rid: meta for rid, meta in recipes.items() if (meta.get("update") or {}).get("stale_after")}
    with get_client(sync_client=True) as client:
        for existing in client.read_automations():
            if existing.name.startswith(AUTOMATION_PREFIX):
                client.delete_automation(existing.id)
    created = []
    for recipe_id, meta in sorted(wanted.items()):
        notify = meta["update"]["notify"]
        try:
            block = Block.load(notify)
        except ValueError as e:  # no such block: the deployments stand, the alert waits for it
            print(f"{recipe_id}: no staleness alert: {e}. Create the block {notify!r}, then deploy again")
            continue
        automation = staleness_automation(recipe_id, meta, block._block_document_id)
        created.append(automation.create().name)
    return created
