"""The loggers a run writes to: Lightning's own, chosen by name in the recipe's ``logger`` section.

``csv`` is always there: logs/metrics.csv is what the report's curves, ``--resume`` and the messages about
a diverged run read.  ``tensorboard`` writes logs/tensorboard, ``mlflow`` a local MLflow store (SQLite,
logs/mlflow.db: MLflow's file store is deprecated) unless ``tracking_uri`` names a server, ``wandb`` an
offline run under logs/wandb unless ``offline: false``.  Each also gets the resolved recipe as
hyper-parameters and, after the evaluation, the final metrics (``<split>/<metric id>``).  A logger's package
is imported only when the recipe names it; a missing one is an error saying what to install.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any, Mapping

from xmcore.errors import XmcoreError

# What each logger imports, and what installs it.
PACKAGES = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "mlflow": (("mlflow",), "mlflow"),
    "wandb": (("wandb",), "wandb"),
}


def check_available(recipe) -> None:
    """Refuse a named logger whose package is not installed, before anything is built."""
    for i, section in enumerate(recipe.logger):
        if section.name not in PACKAGES:
            continue
        modules, pip = PACKAGES[section.name]
        if not any(importlib.util.find_spec(m) for m in modules):
            raise XmcoreError(f"logger.{i}.name: the {section.name} logger needs the {pip} package, which is not "
                              f"installed: pip install {pip} (or remove it from logger)")
        if section.name == "mlflow" and section.tracking_uri is None and not all(
                importlib.util.find_spec(m) for m in ("sqlalchemy", "alembic")):
            raise XmcoreError(f"logger.{i}: MLflow's local store (logs/mlflow.db) needs sqlalchemy and alembic, which "
                              "pip install mlflow brings (mlflow-skinny does not): pip install sqlalchemy alembic, "
                              f"or give logger.{i}.tracking_uri")


def build_loggers(recipe, run_dir: Path) -> list:
    """Lightning loggers for a run: the CSV logger, then each one the recipe names."""
    from pytorch_lightning.loggers import CSVLogger

    check_available(recipe)
    loggers = [CSVLogger(run_dir, name="logs", version="")]
    for section in recipe.logger:
        if section.name != "csv":
            loggers.append(_BUILDERS[section.name](section, recipe, Path(run_dir)))
    return loggers


def _tensorboard(section, recipe, run_dir: Path):
    from pytorch_lightning.loggers import TensorBoardLogger

    return TensorBoardLogger(run_dir / "logs", name="tensorboard", version="", default_hp_metric=False)


def _mlflow(section, recipe, run_dir: Path):
    from pytorch_lightning.loggers import MLFlowLogger

    # MLflow keeps '_', '-', '.', ' ' and '/' in metric names: Lightning logs i2t/R@1 as i2t/R1, and says so each time.
    warnings.filterwarnings("ignore", message="MLFlow only allows", category=RuntimeWarning)
    logs = (run_dir / "logs").resolve()
    logs.mkdir(parents=True, exist_ok=True)
    return MLFlowLogger(
        experiment_name=section.experiment or recipe.name,
        run_name=run_dir.name,
        tracking_uri=section.tracking_uri or f"sqlite:///{logs / 'mlflow.db'}",
        artifact_location=None if section.tracking_uri else (logs / "mlflow-artifacts").as_uri(),
    )


def _wandb(section, recipe, run_dir: Path):
    from pytorch_lightning.loggers import WandbLogger

    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=section.experiment or recipe.name, name=run_dir.name, save_dir=str(run_dir / "logs"),
                       offline=section.offline)


_BUILDERS = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}


def trackers(loggers: list) -> list:
    """The loggers besides the CSV one (whose file holds the training curves only, as before)."""
    from pytorch_lightning.loggers import CSVLogger

    return [lg for lg in loggers if not isinstance(lg, CSVLogger)]


def log_recipe(loggers: list, resolved: Mapping[str, Any]) -> None:
    """The resolved recipe as each tracker's hyper-parameters (nested keys flattened by Lightning: data/name)."""
    for logger in trackers(loggers):
        logger.log_hyperparams(dict(resolved))


def log_final_metrics(loggers: list, metrics: Mapping[str, float], split: str, step: int) -> None:
    """The evaluation's metrics, as ``<split>/<id>`` at the last training step; then each tracker is closed."""
    from pytorch_lightning.loggers import WandbLogger

    values = {f"{split}/{key}": float(value) for key, value in metrics.items()}
    for logger in trackers(loggers):
        logger.log_metrics(values, step=step)
        logger.save()
        logger.finalize("success")
        if isinstance(logger, WandbLogger):  # Lightning leaves wandb's run open: the next run in this process would join it
            logger.experiment.finish()
