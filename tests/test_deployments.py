"""Deployments are generated from the recipes and the bakery registry; they cannot drift."""

from flows.deploy import PREFECT_FILE, bakeries, render
from forge.loading import list_recipes


def test_prefect_yaml_is_generated_from_the_recipes():
    assert PREFECT_FILE.read_text() == render(), "run `forge deployments` and commit deployments/prefect.yaml"


def test_every_recipe_has_a_deployment_on_a_known_bakery():
    import yaml

    doc = yaml.safe_load(PREFECT_FILE.read_text())
    names = {d["name"]: d for d in doc["deployments"]}
    registry = bakeries()
    for source in list_recipes():
        d = names[source.recipe_id]
        assert d["entrypoint"] == "flows/recipe.py:recipe" and d["parameters"]["recipe"] == source.recipe_id
        bakery = registry[source.meta()["bakery"]["id"]]
        assert d["work_pool"]["name"] == bakery["work_pool"]["name"]


def test_bakery_registry_names_credentials_never_values():
    for bakery_id, bakery in bakeries().items():
        assert {"work_pool", "target_root", "cache_root", "credentials", "dask"} <= set(bakery), bakery_id
        assert set(bakery["credentials"]) <= {"kind", "service_account", "block"}, bakery_id
