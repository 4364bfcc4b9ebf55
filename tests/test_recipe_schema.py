"""Recipe loading and overrides, in process."""

import pytest
import yaml

from conftest import ROOT
from xmcore.errors import RecipeError
from xmcore.recipe import load_recipe, validate


def test_overrides_parse_yaml_values_and_nested_keys(plugins):
    loaded = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        ["fusion.dim=32", "eval.metrics.0.k=[1, 2]", "trainer.precision=bf16-mixed", "augment.image=[]", "seed=7"],
    )
    recipe = validate(loaded, plugins)
    assert recipe.fusion.dim == 32 and recipe.seed == 7
    assert recipe.eval.metrics[0].params.k == [1, 2]
    assert recipe.trainer.precision == "bf16-mixed"
    assert recipe.name == "quickstart"


def test_resolved_recipe_fills_defaults_and_round_trips(plugins, tmp_path):
    recipe = validate(load_recipe(ROOT / "recipes" / "quickstart.yaml"), plugins)
    resolved = recipe.resolved()
    assert resolved["fusion"] == {"name": "nonlinear", "dim": 128, "hidden": 512, "layers": 2, "dropout": 0.1}
    assert resolved["loss"]["temperature"] == 0.07
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(resolved))
    again = validate(load_recipe(path), plugins)
    assert again.resolved() == resolved


def test_bad_list_index_override(plugins):
    import yaml

    listed = len(yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())["eval"]["metrics"])
    with pytest.raises(RecipeError, match=rf"'eval.metrics.{listed + 1}': expected a list index below {listed}"):
        load_recipe(ROOT / "recipes" / "quickstart.yaml", [f"eval.metrics.{listed + 1}.k=[1]"])
