"""Every recipe in recipes/ runs through the real CLI at tiny size; fusion strategies swap by override."""

import json

import pytest

from conftest import RECIPES
from xmcore.testing import run_cli, tiny_overrides

EXPECTED_IDS = [
    "i2t/R@1", "i2t/R@5", "i2t/R@10", "i2t/medR", "i2t/meanR",
    "t2i/R@1", "t2i/R@5", "t2i/R@10", "t2i/medR", "t2i/meanR",
    "rsum",
]


def check_run_dir(run_dir, stdout, checkpoints=True):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [k for k in metrics if k in EXPECTED_IDS] == EXPECTED_IDS  # more metrics may follow their direction
    for key, value in metrics.items():
        if "/R@" in key:
            assert 0.0 <= value <= 1.0, (key, value)
        elif key.endswith(("/medR", "/meanR")):
            assert value >= 1.0, (key, value)
    assert metrics["rsum"] == pytest.approx(sum(v for k, v in metrics.items() if "/R@" in k))
    for name in ("recipe.yaml", "environment.json", "data_report.json", "metrics.md"):
        assert (run_dir / name).is_file(), name
    if checkpoints:  # fast_dev_run writes neither checkpoints nor logs
        assert (run_dir / "logs" / "metrics.csv").is_file()
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["packages"]["torch"] and env["packages"]["pytorch-lightning"] and env["xmcore"]
    assert "| i2t |" in stdout and "| t2i |" in stdout
    return metrics


def fixture_data(recipe, tmp_path):
    """Overrides pointing a recipe that needs the user's data at a small fixture in the same format."""
    import yaml

    from conftest import write_karpathy

    name = yaml.safe_load(recipe.read_text())["data"]["name"]
    if name == "karpathy":
        annotations = write_karpathy(tmp_path / "data")
        return [f"data.annotations={annotations}", f"data.image_root={tmp_path / 'data' / 'images'}"]
    return []


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_runs_through_cli(recipe, plugins, tmp_path):
    out = tmp_path / "run"
    data = fixture_data(recipe, tmp_path)
    result = run_cli("run", recipe, *data, *tiny_overrides(recipe, plugins, data), "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    check_run_dir(out, result.stdout)


@pytest.mark.parametrize("fusion", ["linear", "nonlinear", "adversarial"])
def test_fusion_swapped_by_override(fusion, plugins, tmp_path):
    recipe = [r for r in RECIPES if r.stem == "quickstart"][0]
    out = tmp_path / fusion
    result = run_cli("run", recipe, *tiny_overrides(recipe, plugins), f"fusion.name={fusion}", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    check_run_dir(out, result.stdout)
    resolved = (out / "recipe.yaml").read_text()
    assert f"name: {fusion}" in resolved
    header = (out / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    if fusion == "adversarial":  # the discriminator's loss and accuracy are logged
        assert {"train/disc_loss", "train/disc_acc", "train/adv_lambda"} <= set(header)
    else:
        assert "train/disc_loss" not in header
    # The strategies build different models: the trained weights show which one ran.
    import torch

    keys = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    fusion_keys = sorted(k.removeprefix("fusion.") for k in keys if k.startswith("fusion."))
    linear_layers = {k.rsplit(".", 1)[0] for k in fusion_keys if k.endswith(".weight") and keys["fusion." + k].ndim == 2}
    norms = [k for k in fusion_keys if k.endswith(".weight") and keys["fusion." + k].ndim == 1]
    discriminator = [k for k in fusion_keys if k.startswith("discriminator.")]
    if fusion == "linear":  # one projection per modality, nothing else
        assert fusion_keys == ["proj.image.bias", "proj.image.weight", "proj.text.bias", "proj.text.weight"]
    else:  # hidden layers with LayerNorm; the adversarial one adds a discriminator
        assert len([k for k in linear_layers if k.startswith("proj.image")]) >= 2 and norms
        assert bool(discriminator) == (fusion == "adversarial")


def test_default_run_directory_and_resume(plugins, tmp_path):
    recipe = [r for r in RECIPES if r.stem == "quickstart"][0]
    tiny = tiny_overrides(recipe, plugins)
    first = run_cli("run", recipe, *tiny, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("quickstart-")

    again = run_cli("run", recipe, *tiny, "--out", run_dir)
    assert again.returncode == 2 and "already holds a trained run" in again.stderr and "Traceback" not in again.stderr

    changed = run_cli("run", recipe, *tiny, "fusion.name=linear", "--out", run_dir, "--resume")
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "the recipe differs from the run's" in changed.stderr and "fusion" in changed.stderr

    resumed = run_cli("run", recipe, *tiny, "trainer.max_epochs=2", "--out", run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epochs = {line.split(",")[0] for line in (run_dir / "logs" / "metrics.csv").read_text().splitlines()[1:]}
    assert "1" in epochs  # training went on into a second epoch
    assert (run_dir / "logs" / "metrics.part1.csv").is_file()  # the first part's log is kept


def test_fast_dev_run_still_evaluates_the_whole_split(plugins, tmp_path):
    recipe = [r for r in RECIPES if r.stem == "quickstart"][0]
    out = tmp_path / "run"
    result = run_cli("run", recipe, *tiny_overrides(recipe, plugins), "trainer.fast_dev_run=true",
                     "eval.batch_size=4", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    check_run_dir(out, result.stdout, checkpoints=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["trainer.accelerator=tpu"], "trainer: Lightning refused the trainer section"),
        (["--out", "/etc/passwd"], "--out /etc/passwd: cannot use it as a run directory"),
        (["trainer.max_epochs=-1", "trainer.max_steps=-1"], "optimizer.schedule: a cosine schedule"),
    ],
)
def test_run_time_errors_are_clear(args, message, plugins, tmp_path):
    recipe = [r for r in RECIPES if r.stem == "quickstart"][0]
    out = [] if "--out" in args else ["--out", str(tmp_path / "run")]
    result = run_cli("run", recipe, *tiny_overrides(recipe, plugins), *args, *out)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]  # bad input
    assert message in result.stderr


def test_a_failed_run_directory_can_be_reused(plugins, tmp_path):
    recipe = [r for r in RECIPES if r.stem == "quickstart"][0]
    out = tmp_path / "run"
    failed = run_cli("run", recipe, *tiny_overrides(recipe, plugins), "trainer.accelerator=tpu", "--out", out)
    assert failed.returncode == 2 and (out / "recipe.yaml").is_file()
    result = run_cli("run", recipe, *tiny_overrides(recipe, plugins), "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]


def test_evaluate_a_trained_run_on_its_split_and_on_other_data(plugins, tmp_path):
    recipe = [r for r in RECIPES if r.stem == "quickstart"][0]
    run_dir = tmp_path / "run"
    trained = run_cli("run", recipe, *tiny_overrides(recipe, plugins), "eval.report=true", "--out", run_dir)
    assert trained.returncode == 0, trained.stderr[-3000:]
    again = run_cli("evaluate", run_dir, "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr[-3000:]
    first = json.loads((run_dir / "metrics.json").read_text())
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert second == pytest.approx(first)  # the same checkpoint on the same split: the same numbers

    # other data: a differently seeded shapes set, so captions the LSTM never saw; the vocabulary comes from the checkpoint
    other = run_cli("evaluate", run_dir, "data.seed=5", "data.test=12", "eval.metrics=[{name: map}]", "eval.report=true")
    assert other.returncode == 0, other.stderr[-3000:]
    (written,) = (run_dir / "evaluations").iterdir()
    assert set(json.loads((written / "metrics.json").read_text())) == {"i2t/mAP", "t2i/mAP"}

    missing = run_cli("evaluate", tmp_path)
    assert missing.returncode == 2 and "no recipe.yaml" in missing.stderr

    # reports: written by run and evaluate, drawn again by `xmcore report`, compared by `xmcore compare`
    for d in (run_dir, written):
        report = (d / "report.md").read_text()
        for figure in ("recall_at_k.png", "projection.png", "gallery.png"):
            assert f"]({figure})" in report and (d / figure).read_bytes()[:4] == b"\x89PNG"
    assert "](curves.png)" in (run_dir / "report.md").read_text()
    (run_dir / "gallery.png").unlink()
    redraw = run_cli("report", run_dir)
    assert redraw.returncode == 0, redraw.stderr[-3000:]
    assert (run_dir / "gallery.png").is_file()
    compared = run_cli("compare", run_dir, written, "--out", tmp_path / "cmp")
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert "data.seed" in compared.stdout and "eval.metrics" in compared.stdout
    assert (tmp_path / "cmp" / "comparison.png").is_file() and (tmp_path / "cmp" / "comparison.md").is_file()
