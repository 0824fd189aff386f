"""Deployments are generated from the recipes and the bakery registry; they cannot drift."""

from flows.bakery import load_bakeries
from flows.deploy import PREFECT_FILE, render
from forge.recipe.loading import list_recipes


def test_prefect_yaml_is_generated_from_the_recipes():
    assert PREFECT_FILE.read_text() == render(), "run `forge deployments` and commit deployments/prefect.yaml"


def test_every_recipe_has_a_deployment_on_a_known_bakery():
    import yaml

    doc = yaml.safe_load(PREFECT_FILE.read_text())
    names = {d["name"]: d for d in doc["deployments"]}
    registry = load_bakeries()
    for source in list_recipes():
        d = names[source.recipe_id]
        assert d["entrypoint"] == "flows/recipe.py:recipe" and d["parameters"]["recipe"] == source.recipe_id
        bakery = registry[source.meta()["bakery"]["id"]]
        assert d["work_pool"]["name"] == bakery.work_pool
        assert d["work_pool"]["job_variables"]["env"]["FORGE_BAKERY"] == bakery.id


def test_summary_artifact_key_is_valid_for_any_recipe_id():
    """Recipe ids come from file names (underscores, dots); Prefect's own model must accept the key."""
    from prefect.artifacts import MarkdownArtifact

    from flows.reports import artifact_key

    for recipe_id in ("noaa-oisst", "oisst_with_codec", "My.Recipe v2"):
        MarkdownArtifact(key=artifact_key(recipe_id), markdown="x")
    assert artifact_key("oisst_with_codec") == "recipe-oisst-with-codec"


def test_every_flow_parameter_has_a_type_and_a_description():
    """What the Prefect UI shows on a deployment's run form."""
    from flows.recipe import recipe

    for name, schema in recipe.parameters.properties.items():
        assert schema.get("description"), name
        assert schema.get("type") or schema.get("anyOf"), name


def test_a_deployment_describes_its_recipe_from_meta_yaml():
    import yaml

    doc = yaml.safe_load(PREFECT_FILE.read_text())
    [oisst] = [d for d in doc["deployments"] if d["name"] == "noaa-oisst"]
    assert oisst["description"].startswith(
        "NOAA Optimum Interpolation SST v2.1 (AVHRR), daily. Daily 1/4-degree"
    )
