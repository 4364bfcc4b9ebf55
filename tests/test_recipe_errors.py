"""Bad recipes and overrides: one clear line per problem, exit status 2, no traceback."""

import textwrap

import pytest

from conftest import ROOT, cli

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


@pytest.fixture
def validate(capfd):
    return lambda *args, recipe=QUICKSTART: cli(capfd, "validate", recipe, *args)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["fusion.name=lineer"],
         "quickstart.yaml: fusion.name: unknown fusion 'lineer'; did you mean 'linear'? "
         "installed: adversarial, linear, nonlinear"),
        (["fusoin.name=linear"], "quickstart.yaml: fusoin: unknown key; did you mean 'fusion'?"),
        (["trainer.max_epoch=3"], "trainer.max_epoch: unknown key; did you mean 'max_epochs'?"),
        (["data.batch_size=abc"], "data.batch_size: input should be a valid integer"),
        (["encoders.text.hiden=3"],
         "encoders.text.hiden: unknown parameter of encoder 'lstm'; did you mean 'hidden'?"),
        (["fusion.hidden=-4"], "fusion.hidden: input should be greater than 0, got an integer (-4)"),
        (["loss.name=tripplet"], "loss.name: unknown loss 'tripplet'; did you mean 'triplet'?"),
        (["encoders.image.name=lstm"], "encoders.image.name: encoder 'lstm' does not accept modality 'image'"),
        (["optimizer.name=adamm"], "optimizer.name: expected one of 'adamw', 'adam' or 'sgd', got 'adamm'"),
        (["eval.metrics.0.k=[0]"], "eval.metrics.0.k: expected a non-empty list of positive integers"),
        (["no_equals_sign"], "override 'no_equals_sign': expected KEY=VALUE"),
        (["seed.x=1"], "override 'seed.x=1': 'seed' is an integer (0), not a section"),
        (["encoders.audio.name=lstm"], "encoders.audio: dataset 'shapes' provides image, text, not audio: remove it"),
        (["encoders.text=null"], "encoders.text: expected a section (a mapping of keys), got null"),
        (["trainer.devices=abc"], "trainer.devices: expected a count"),
        (["trainer.precision=bogus"], "trainer.precision: expected one of 64, 64-true"),
        (["name=../x"], "name: string should match pattern"),
    ],
)
def test_bad_override_is_reported(overrides, expected, validate):
    result = validate(*overrides)
    assert result.returncode == 2
    assert expected in result.stderr


def test_all_problems_reported_at_once(validate):
    result = validate("fusoin.name=linear", "data.batch_size=abc", "optimizer.lr=-1")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "quickstart.yaml:" in line]
    assert len(lines) == 3


def test_bad_files(tmp_path, validate):
    missing = validate(recipe=tmp_path / "missing.yaml")
    assert missing.returncode == 2 and "missing.yaml: no such recipe file" in missing.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  name: shapes\n   batch_size: 3\n")
    result = validate(recipe=broken)
    assert result.returncode == 2 and "broken.yaml: not valid YAML (line 3" in result.stderr

    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    result = validate(recipe=listing)
    assert result.returncode == 2 and "expected a mapping of sections" in result.stderr

    incomplete = tmp_path / "incomplete.yaml"
    incomplete.write_text(textwrap.dedent("""\
        data: {name: shapes}
        encoders: {image: {name: timm}}
    """))
    result = validate(recipe=incomplete)
    assert result.returncode == 2
    assert "incomplete.yaml: fusion: required key is missing" in result.stderr
    assert "incomplete.yaml: loss: required key is missing" in result.stderr
    incomplete.write_text(incomplete.read_text() + "fusion: {name: linear}\nloss: {name: infonce}\n")
    result = validate(recipe=incomplete)
    assert result.returncode == 2
    assert "encoders.text: missing; dataset 'shapes' provides image, text: add encoders.text.name: ..." in result.stderr


def test_yaml_is_loaded_safely(tmp_path, validate):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    result = validate(recipe=evil)
    assert result.returncode == 2 and "not valid YAML" in result.stderr and "pwned" not in result.stdout


def test_valid_recipe_and_print(validate):
    result = validate("fusion.name=adversarial", "--print")
    assert result.returncode == 0, result.stderr
    assert "name: adversarial" in result.stdout and "disc_weight: 1.0" in result.stdout
    # the nonlinear-only key the recipe might carry is not silently kept or silently dropped
    result = validate("fusion.name=nonlinear", "fusion.hidden=64", "--print")
    assert "hidden: 64" in result.stdout


def test_replacing_a_component_drops_its_params_out_loud(tmp_path, validate):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(QUICKSTART.read_text().replace("name: nonlinear", "name: nonlinear\n  hidden: 64"))
    result = validate("fusion.name=linear", recipe=recipe)
    assert result.returncode == 0, result.stderr
    assert "note: fusion.hidden dropped: not a parameter of fusion 'linear'" in result.stderr
    # a key typed on the command line is never dropped
    typed = validate("fusion.name=linear", "fusion.hidden=64")
    assert typed.returncode == 2 and "fusion.hidden: unknown parameter of fusion 'linear'" in typed.stderr
    # without an override that changes the name, the same key is an error
    result = validate(recipe=tmp_path / "r.yaml")
    assert result.returncode == 0
    recipe.write_text(QUICKSTART.read_text().replace("name: nonlinear", "name: linear\n  hidden: 64"))
    result = validate(recipe=recipe)
    assert result.returncode == 2 and "fusion.hidden: unknown parameter of fusion 'linear'" in result.stderr


def test_a_recipe_is_validated_completely_before_any_data_is_read(tmp_path, capfd):
    """A typo and absent data: `run` exits 2 naming only the typo; the data was never opened."""
    absent = tmp_path / "absent"
    result = cli(capfd, "run", ROOT / "recipes" / "flickr30k.yaml", f"data.annotations={absent / 'dataset_flickr30k.json'}",
                 f"data.image_root={absent / 'images'}", "trainer.max_epoch=3", "--out", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    problems = [line for line in result.stderr.splitlines() if line.strip() and line.strip() != "error:"]
    assert len(problems) == 1 and "trainer.max_epoch: unknown key; did you mean 'max_epochs'?" in problems[0], problems
    assert "absent" not in result.stderr and not (tmp_path / "run").exists()
