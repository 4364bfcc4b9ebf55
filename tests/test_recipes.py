"""Every recipe in recipes/ runs through the real CLI at tiny size; fusion strategies swap by override.

The CLI runs in this process (``conftest.cli``) where a subprocess is not the point."""

import csv
import json

import pytest

from conftest import RECIPES, cli
from xmcore.testing import tiny_overrides

QUICKSTART = [r for r in RECIPES if r.stem == "quickstart"][0]
# Recipes too heavy to train in the suite: validated as written, then trained with these overrides.
# (VGG16 would train and checkpoint 138M parameters, two ~1.6 GB checkpoints; its encoder's output
# width is tested by test_components.py::test_vgg16_encoder_reports_its_real_output_width.)
LIGHTER = {"seed-vgg16-lstm": ["encoders.image.model_name=test_resnet"],
           "clotho": ["encoders.audio.model_name=test_efficientnet"],  # EfficientNet-B0 on 30 s windows: ~20 s more
           # CLIP ViT-B-32's weights are a file the user downloads: a tiny random open_clip architecture instead
           "openclip-towers": [f"encoders.{m}.{key}" for m in ("image", "text") for key in (
               "model_name=xmcore-test-vit", "checkpoint=null", "pretrained=null")]}

EXPECTED_IDS = [
    "i2t/R@1", "i2t/R@5", "i2t/R@10", "i2t/medR", "i2t/meanR",
    "t2i/R@1", "t2i/R@5", "t2i/R@10", "t2i/medR", "t2i/meanR",
    "rsum",
]


def expected_ids(directions):
    """EXPECTED_IDS for another pair of modalities (``("a2t", "t2a")``)."""
    rename = dict(zip(("i2t", "t2i"), directions))
    return [rename[k.split("/")[0]] + "/" + k.split("/")[1] if "/" in k else k for k in EXPECTED_IDS]


def recipe_directions(recipe, plugins):
    """The direction ids a recipe's dataset gives: first letters of its modalities (``i2t``, ``t2i``)."""
    import yaml

    from xmcore.evaluation import direction_name

    data = yaml.safe_load(recipe.read_text())["data"]
    first, second = (data.get("modalities") or plugins["dataset"].get(data["name"]).modalities or ("image", "text"))[:2]
    return direction_name(first, second), direction_name(second, first)


def check_run_dir(run_dir, stdout, checkpoints=True, directions=("i2t", "t2i")):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ids = expected_ids(directions)
    assert [k for k in metrics if k in ids] == ids  # more metrics may follow their direction
    for key, value in metrics.items():
        if "/R@" in key:
            assert 0.0 <= value <= 1.0, (key, value)
        elif key.endswith(("/medR", "/meanR")):
            assert value >= 1.0, (key, value)
    assert metrics["rsum"] == pytest.approx(sum(v for k, v in metrics.items() if "/R@" in k and not k.startswith("fold/")))
    for name in ("recipe.yaml", "environment.json", "data_report.json", "metrics.md"):
        assert (run_dir / name).is_file(), name
    if checkpoints:  # fast_dev_run writes neither checkpoints nor logs
        assert (run_dir / "logs" / "metrics.csv").is_file()
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["packages"]["torch"] and env["packages"]["pytorch-lightning"] and env["xmcore"]
    assert f"| {directions[0]} |" in stdout and f"| {directions[1]} |" in stdout
    return metrics


def recipe_eval(recipe):
    """The recipe file's own eval section."""
    import yaml

    return yaml.safe_load(recipe.read_text()).get("eval") or {}


def fixture_data(recipe, tmp_path):
    """Overrides pointing a recipe that needs the user's data at a small fixture in the same format."""
    import yaml

    from conftest import write_karpathy

    name = yaml.safe_load(recipe.read_text())["data"]["name"]
    if name == "karpathy":
        annotations = write_karpathy(tmp_path / "data")
        folds = ["eval.folds=3", "eval.fold_size=1"] if recipe_eval(recipe).get("folds") else []  # the fixture has 3 test images
        return [f"data.annotations={annotations}", f"data.image_root={tmp_path / 'data' / 'images'}", *folds]
    if name == "wikipedia":
        from benchmark_fixtures import write_wikipedia

        return [f"data.root={write_wikipedia(tmp_path / 'wikipedia_dataset')}", "data.val_from_test=3"]
    if name == "pascal-sentences":
        from benchmark_fixtures import write_pascal_sentences

        return [f"data.root={write_pascal_sentences(tmp_path / 'pascal')}"]
    if name == "clotho":
        from audio_fixtures import write_clotho

        return [f"data.root={write_clotho(tmp_path / 'clotho')}"]
    return []


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_runs_through_cli(recipe, plugins, tmp_path, capfd):
    import shutil

    if recipe.stem.startswith("spoken-") and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng); CI installs it")
    out = tmp_path / "run"
    data = fixture_data(recipe, tmp_path)
    if recipe.stem in LIGHTER:
        validated = cli(capfd, "validate", recipe, *data)
        assert validated.returncode == 0, validated.stderr
        data += LIGHTER[recipe.stem]
    result = cli(capfd, "run", recipe, *data, *tiny_overrides(recipe, plugins, data), "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = check_run_dir(out, result.stdout, directions=recipe_directions(recipe, plugins))
    if recipe_eval(recipe).get("folds"):  # COCO's 1k protocol: the folds' mean beside the full split's figures
        assert "fold/i2t/R@1" in metrics and "fold/rsum" in metrics
    if recipe_eval(recipe).get("relevance") == "label":  # the class-level protocol: judged by class, read by mAP
        import numpy as np

        assert "i2t/mAP" in metrics and "image_labels" in np.load(out / "embeddings.npz")


@pytest.mark.parametrize("fusion", ["linear", "nonlinear", "adversarial"])
def test_fusion_swapped_by_override(fusion, plugins, tmp_path, capfd):
    recipe = QUICKSTART
    out = tmp_path / fusion
    result = cli(capfd, "run", recipe, *tiny_overrides(recipe, plugins), f"fusion.name={fusion}", "--out", out)
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


def metric_rows(path):
    """The rows of a Lightning CSV log that belong to an epoch (the learning-rate monitor's rows have none)."""
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if row["epoch"]]


def global_step(run_dir):
    import torch

    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]


def test_default_run_directory_and_resume(plugins, tmp_path, monkeypatch, capfd):
    tiny = tiny_overrides(QUICKSTART, plugins)  # one epoch of 2 steps
    monkeypatch.chdir(tmp_path)
    first = cli(capfd, "run", QUICKSTART, *tiny)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("quickstart-") and global_step(run_dir) == 2

    again = cli(capfd, "run", QUICKSTART, *tiny, "--out", run_dir)
    assert again.returncode == 2 and "already holds a trained run" in again.stderr

    changed = cli(capfd, "run", QUICKSTART, *tiny, "fusion.name=linear", "--out", run_dir, "--resume")
    assert changed.returncode == 2
    assert "the recipe differs from the run's" in changed.stderr and "fusion" in changed.stderr

    # a second epoch of 3 steps: continued, 2 + 3 steps in all (a restart would log epoch 0 again and total 6)
    resumed = cli(capfd, "run", QUICKSTART, *tiny, "trainer.max_epochs=2", "trainer.limit_train_batches=3",
                  "--out", run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = metric_rows(run_dir / "logs" / "metrics.csv")
    assert rows and {r["epoch"] for r in rows} == {"1"}  # no epoch-0 rows: training went on from the first epoch
    assert min(int(r["step"]) for r in rows) >= 2
    assert global_step(run_dir) == 5
    kept = metric_rows(run_dir / "logs" / "metrics.part1.csv")  # the first part's log is kept
    assert {r["epoch"] for r in kept} == {"0"}


def test_fast_dev_run_still_evaluates_the_whole_split(plugins, tmp_path, capfd):
    out = tmp_path / "run"
    result = cli(capfd, "run", QUICKSTART, *tiny_overrides(QUICKSTART, plugins), "trainer.fast_dev_run=true",
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
def test_run_time_errors_are_clear(args, message, plugins, tmp_path, capfd):
    out = [] if "--out" in args else ["--out", str(tmp_path / "run")]
    result = cli(capfd, "run", QUICKSTART, *tiny_overrides(QUICKSTART, plugins), *args, *out)
    assert result.returncode == 2, result.stderr[-3000:]  # bad input
    assert message in result.stderr


def test_a_failed_run_directory_can_be_reused(plugins, tmp_path, capfd):
    out = tmp_path / "run"
    failed = cli(capfd, "run", QUICKSTART, *tiny_overrides(QUICKSTART, plugins), "trainer.accelerator=tpu", "--out", out)
    assert failed.returncode == 2 and (out / "recipe.yaml").is_file()
    result = cli(capfd, "run", QUICKSTART, *tiny_overrides(QUICKSTART, plugins), "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]


def test_evaluate_a_trained_run_on_its_split_and_on_other_data(trained_run_copy, tmp_path, capfd):
    run_dir = trained_run_copy  # trained with eval.report=true (conftest.trained_run)
    again = cli(capfd, "evaluate", run_dir, "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr[-3000:]
    first = json.loads((run_dir / "metrics.json").read_text())
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert second == pytest.approx(first)  # the same checkpoint on the same split: the same numbers

    # other data: a differently seeded shapes set, so captions the LSTM never saw; the vocabulary comes from the checkpoint
    other = cli(capfd, "evaluate", run_dir, "data.seed=5", "data.test=12", "eval.metrics=[{name: map}]", "eval.report=true")
    assert other.returncode == 0, other.stderr[-3000:]
    (written,) = (run_dir / "evaluations").iterdir()
    assert set(json.loads((written / "metrics.json").read_text())) == {"i2t/mAP", "t2i/mAP"}

    missing = cli(capfd, "evaluate", tmp_path)
    assert missing.returncode == 2 and "no recipe.yaml" in missing.stderr

    # reports: written by run and evaluate, drawn again by `xmcore report`, compared by `xmcore compare`
    for d in (run_dir, written):
        report = (d / "report.md").read_text()
        for figure in ("recall_at_k.png", "projection.png", "gallery.png"):
            assert f"]({figure})" in report and (d / figure).read_bytes()[:4] == b"\x89PNG"
    assert "](curves.png)" in (run_dir / "report.md").read_text()
    (run_dir / "gallery.png").unlink()
    redraw = cli(capfd, "report", run_dir)
    assert redraw.returncode == 0, redraw.stderr[-3000:]
    assert (run_dir / "gallery.png").is_file()
    compared = cli(capfd, "compare", run_dir, written, "--out", tmp_path / "cmp")
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert "data.seed" in compared.stdout and "eval.metrics" in compared.stdout
    assert (tmp_path / "cmp" / "comparison.png").is_file() and (tmp_path / "cmp" / "comparison.md").is_file()
