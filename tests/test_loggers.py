"""``logger:`` in a recipe: Lightning's CSV logger as before, TensorBoard, MLflow (a local store in the run
directory) and Weights & Biases (offline) by name, each given the resolved recipe and the final metrics."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, cli
from xmcore.testing import offline_env, tiny_overrides

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def run(plugins, tmp_path, capfd, *overrides):
    out = tmp_path / "run"
    result = cli(capfd, "run", QUICKSTART, *tiny_overrides(QUICKSTART, plugins, list(overrides)), *overrides, "--out", out)
    return result, out


def test_by_default_the_csv_log_alone_and_no_logger_library_is_imported(plugins, tmp_path):
    script = (
        "import sys; from xmcore.cli import main; from xmcore.plugins import load_plugins; "
        "from xmcore.testing import tiny_overrides; "
        f"code = main(['run', {str(QUICKSTART)!r}, *tiny_overrides({str(QUICKSTART)!r}, load_plugins()), '--out', {str(tmp_path / 'run')!r}]); "
        "print('IMPORTED', sorted(m for m in ('tensorboard', 'tensorboardX', 'mlflow', 'wandb') if m in sys.modules)); "
        "sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=offline_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IMPORTED []" in result.stdout
    logs = tmp_path / "run" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["metrics.csv"]  # as before: no hparams.yaml, no other logger
    header = (logs / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/loss" in header and "val/rsum" in header
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["logger"] == [
        {"name": "csv", "experiment": None, "tracking_uri": None, "offline": True}]


def test_tensorboard_and_mlflow_get_the_recipe_and_the_final_metrics(plugins, tmp_path, capfd):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    result, out = run(plugins, tmp_path, capfd, "logger=[tensorboard, {name: mlflow, experiment: shapes-study}]")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "logs" / "metrics.csv").is_file()  # always there: the report and --resume read it

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs" / "tensorboard")).Reload()
    scalars = events.Tags()["scalars"]
    assert "train/loss" in scalars and "val/rsum" in scalars
    (final,) = events.Scalars("test/i2t/R@1")
    assert final.value == pytest.approx(metrics["i2t/R@1"]) and final.step == 2
    hparams = yaml.safe_load((out / "logs" / "tensorboard" / "hparams.yaml").read_text())
    assert hparams["data"]["name"] == "shapes" and hparams["fusion"]["dim"] == 128

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(out / 'logs' / 'mlflow.db').resolve()}")
    (logged,) = client.search_runs([client.get_experiment_by_name("shapes-study").experiment_id])
    assert logged.info.run_name == "run" and logged.info.status == "FINISHED"
    assert logged.data.params["data/name"] == "shapes" and logged.data.params["fusion/name"] == "nonlinear"
    assert logged.data.metrics["test/i2t/R1"] == pytest.approx(metrics["i2t/R@1"])  # MLflow's names lose the '@'
    assert logged.data.metrics["test/rsum"] == pytest.approx(metrics["rsum"]) and "train/loss" in logged.data.metrics
    assert not (tmp_path / "mlruns").exists() and not (ROOT / "mlruns").exists()


def test_wandb_writes_an_offline_run_per_run(plugins, tmp_path, capfd, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("first", "second"):  # one process: the first run's wandb run is finished, not joined by the second
        result, out = run(plugins, tmp_path / name, capfd, "logger=wandb")
        assert result.returncode == 0, result.stderr[-3000:]
        (offline,) = (out / "logs" / "wandb").glob("offline-run-*")
        assert list(offline.glob("*.wandb"))


@pytest.mark.parametrize("logger, package", [("wandb", "wandb"), ("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_logger_whose_package_is_missing_is_a_clear_error_before_anything_is_built(
        plugins, tmp_path, capfd, monkeypatch, logger, package):
    import importlib.util

    from xmcore import loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec",
                        lambda name, *a: None if name in (package, "tensorboardX") else real(name, *a))
    result, out = run(plugins, tmp_path, capfd, f"logger={logger}")
    assert result.returncode == 2
    assert (f"logger.0.name: the {logger} logger needs the {package} package, which is not installed: "
            f"pip install {package}") in result.stderr
    assert not (out / "data_report.json").exists()  # refused before the data were read


@pytest.mark.parametrize("value, message", [
    ("tensorbord", "logger.0.name: expected one of 'csv', 'tensorboard', 'mlflow' or 'wandb', got 'tensorbord'; did you mean 'tensorboard'"),
    ("{name: tensorboard, tracking_uri: http://x}", "logger.0: tracking_uri is an option of the mlflow logger, not of tensorboard"),
    ("[csv, {name: mlflow, experment: x}]", "logger.1.experment: unknown key; did you mean 'experiment'"),
])
def test_logger_sections_are_validated(plugins, capfd, value, message):
    result = cli(capfd, "validate", QUICKSTART, f"logger={value}")
    assert result.returncode == 2
    assert message in result.stderr
