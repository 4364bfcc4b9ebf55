"""``xmcore run``: build every component a recipe names, train with Lightning, evaluate, write the run directory.

The run directory holds::

    recipe.yaml        the resolved recipe (defaults filled, overrides applied)
    data_report.json   per split: items used, items skipped and why
    environment.json   versions of xmcore, each plugin used, torch, Lightning, timm, ...
    logs/metrics.csv   losses and values logged during training (Lightning's CSVLogger)
    logs/tensorboard/, logs/mlflow.db, logs/wandb/   the loggers the recipe's ``logger`` names (xmcore.loggers)
    checkpoints/       best.ckpt (best validation score by eval.monitor: rsum by default) and last.ckpt
    metrics.json       {"i2t/R@1": ..., ..., "rsum": ...}  (every direction among the modalities)
    metrics.md         the same as a table
    report.md          the metrics and figures: curves, recall_at_k, projection, gallery (.png)
    embeddings.npz     the evaluated split's embeddings (xmcore.embeddings; ``xmcore report`` redraws from them)
"""

from __future__ import annotations

import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from xmcore.errors import RunError, XmcoreError
from xmcore.evaluation import NonFiniteEmbeddings, evaluate, evaluate_folds, metrics_table
from xmcore.io import atomic_write_bytes, atomic_write_text, write_json, write_yaml
from xmcore.plugins import Plugins
from xmcore.recipe import Recipe
from xmcore.registry import BuildContext

TRACKED_PACKAGES = ("torch", "pytorch-lightning", "timm", "sentence-transformers", "pluggy", "pydantic", "numpy")


@dataclass
class Built:
    """Everything built from a recipe, ready for Lightning."""

    data: Any
    encoders: dict[str, Any]
    augment: dict[str, list[Any]]
    fusion: Any
    loss: Any
    metrics: list[Any]
    extra_losses: list[tuple[str, float, Any]] = field(default_factory=list)  # (name, weight, loss) from loss.extra


def build_components(recipe: Recipe, base_dir: Path, run_dir: Path | None = None, training: bool = True) -> Built:
    """Build the components in order: data, augmentations, encoders, fusion, loss, metrics.

    ``training=False`` (embedding with a trained checkpoint, perhaps on other data) builds no losses:
    they only train, and the training data's classes need not be the gallery's."""
    seed = recipe.seed
    data = build_data(recipe, base_dir, run_dir)

    augment = {
        m: [a.component.build(a.params, BuildContext(seed=seed, base_dir=base_dir, modality=m)) for a in sections]
        for m, sections in recipe.augment.items()
    }
    encoders = {}
    train = data.splits["train"]
    for modality in data.modalities:
        enc = recipe.encoders[modality]
        ctx = BuildContext(seed=seed, base_dir=base_dir, modality=modality, train_items=lambda m=modality: train.items[m])
        encoders[modality] = enc.component.build(enc.params, ctx)
    dims = {m: int(e.output_dim) for m, e in encoders.items()}
    fusion = recipe.fusion.component.build(
        recipe.fusion.params, BuildContext(seed=seed, base_dir=base_dir, input_dims=dims, dim=recipe.fusion.dim)
    )
    loss, extra_losses = build_losses(recipe, data, base_dir) if training else (None, [])
    metrics = [m.component.build(m.params, BuildContext(seed=seed, base_dir=base_dir)) for m in recipe.eval.metrics]
    return Built(data, encoders, augment, fusion, loss, metrics, extra_losses)


def build_losses(recipe: Recipe, data, base_dir: Path):
    """The retrieval loss and the ``loss.extra`` objectives (name, weight, loss)."""
    if recipe.loss.groups == "label":
        source = f"dataset '{recipe.data.name}'"
        unlabelled = [n for n, split in data.splits.items() if split.labels is None]
        if unlabelled:
            raise XmcoreError(
                f"loss.groups: 'label' needs class labels, but {source} has none in split "
                f"{', '.join(map(repr, unlabelled))}; use a dataset with labels (csv, jsonl or hf with label_column, "
                "imagefolder, webdataset with .cls files) or set loss.groups=relevance"
            )
    ctx = BuildContext(seed=recipe.seed, base_dir=base_dir, dim=recipe.fusion.dim, num_classes=class_count(recipe, data))
    loss = recipe.loss.component.build(recipe.loss.params, ctx)
    return loss, [(e.name, e.weight, e.component.build(e.params, ctx)) for e in recipe.loss.extra]


def class_count(recipe: Recipe, data) -> int | None:
    """The number of classes when the losses' groups are class labels (``loss.groups: label``, or a
    dataset that judges relevance by class), else ``None``."""
    splits = data.splits.values()
    by_class = recipe.loss.groups == "label" or (
        recipe.loss.groups == "relevance" and all(s.relevance == "label" for s in splits))
    if not by_class:
        return None
    return int(max(s.labels.max() for s in splits if s.labels is not None and len(s.labels))) + 1


def build_data(recipe: Recipe, base_dir: Path, run_dir: Path | None = None):
    """The dataset, cleaned of unusable items (or refused, with ``data.strict``); the report goes to the run dir."""
    from xmcore.data import clean_split

    section = recipe.data
    data = section.component.build(section.params, BuildContext(seed=recipe.seed, base_dir=base_dir))
    source = f"dataset '{section.name}'" + (f" ({data.description})" if data.description else "")
    _judge_relevance(data, recipe.eval.relevance, source)  # before data.modalities, which keeps the groups
    if section.modalities:
        data.splits = {name: _select(split, section.modalities, source) for name, split in data.splits.items()}
    reports = {}
    for name, split in list(data.splits.items()):
        data.splits[name], reports[name] = clean_split(split)
    problems = [(name, p) for name, r in reports.items() for p in r["problems"]]
    if run_dir is not None:
        write_json(run_dir / "data_report.json", {"source": source, "strict": section.strict, "splits": reports})
    if problems and section.strict:
        lines = [f"  {name}: {p['item']}: {p['reason']}" for name, p in problems[:20]]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise XmcoreError(
            f"{source}: {len(problems)} bad items and data.strict is true:\n" + "\n".join(lines) + more
            + "\nfix or remove them, or set data.strict=false to skip them"
        )
    if problems:
        counts = ", ".join(f"{n} {r}" for r, n in sum((Counter(r["reasons"]) for r in reports.values()), Counter()).items())
        first = "; ".join(f"{p['item']} ({p['reason']})" for _, p in problems[:3])
        print(f"warning: {source}: skipped {len(problems)} bad items ({counts}); first: {first}", file=sys.stderr)
    _check_data(recipe, data, source)
    return data


def _judge_relevance(data, relevance: str, source: str) -> None:
    """``eval.relevance``: 'owner' and 'label' replace the dataset's own judgement in every split ('auto' keeps it)."""
    if relevance == "auto":
        return
    for name, split in data.splits.items():
        if relevance == "label":
            first = split.modalities[0]
            if split.labels is None:
                raise XmcoreError(
                    f"eval.relevance: 'label' ranks by class, but {source} has no class labels in split '{name}'; "
                    "use a dataset with labels (csv or jsonl with label_column, imagefolder, webdataset with .cls "
                    "files) or set eval.relevance=auto"
                )
            unlabelled = np.flatnonzero(split.labels < 0)
            if len(unlabelled):
                raise XmcoreError(
                    f"eval.relevance: 'label' ranks by class, but {len(unlabelled)} of {len(split.labels)} {first} "
                    f"items of split '{name}' in {source} have no label (first: {split.items[first][unlabelled[0]]}); "
                    "give every item a label, or set eval.relevance=auto"
                )
        split.relevance = relevance


def _select(split, modalities, source: str):
    try:
        return split.select(modalities)
    except ValueError as exc:
        raise XmcoreError(f"data.modalities: {source}: {exc}") from None


def training_pairs(recipe: Recipe, modalities) -> list[tuple[str, str]]:
    """The modality pairs the losses train (``loss.pairs``, checked against the data's modalities); by
    default the first modality (the owners) with each of the others."""
    if not recipe.loss.pairs:
        return [(modalities[0], m) for m in modalities[1:]]
    pairs = [tuple(p) for p in recipe.loss.pairs]
    for a, b in pairs:
        unknown = [m for m in (a, b) if m not in modalities]
        if unknown or a == b:
            raise XmcoreError(
                f"loss.pairs: [{a}, {b}] must name two different modalities of the data "
                f"({', '.join(modalities)})" + (f"; it has no {', '.join(unknown)}" if unknown else "")
            )
    untrained = [m for m in modalities if not any(m in p for p in pairs)]
    if untrained:
        raise XmcoreError(
            f"loss.pairs: {', '.join(untrained)} is in no pair, so its encoder would never train; add a pair "
            f"with it, or leave it out with data.modalities=[{','.join(m for m in modalities if m not in untrained)}]"
        )
    return pairs


def _check_data(recipe: Recipe, data, source: str) -> None:
    from xmcore.evaluation import directions

    directions(data.modalities)  # refuses two modalities whose direction ids would clash
    training_pairs(recipe, data.modalities)
    missing = [s for s in ("train", recipe.eval.split) if s not in data.splits]
    if missing:
        raise XmcoreError(f"{source} has no split {', '.join(map(repr, missing))}; it has: {', '.join(data.splits)}")
    evaluated = data.splits[recipe.eval.split]
    owners = len(evaluated.items[evaluated.modalities[0]])
    if recipe.eval.folds * recipe.eval.fold_size > owners:
        raise XmcoreError(
            f"eval.folds: {recipe.eval.folds} folds of {recipe.eval.fold_size} {evaluated.modalities[0]}s need "
            f"{recipe.eval.folds * recipe.eval.fold_size}, but split '{recipe.eval.split}' of {source} has {owners}; "
            "lower eval.folds or eval.fold_size (or set eval.folds=0)"
        )
    for split_name, split in data.splits.items():
        for m in split.modalities:
            if len(split.items[m]) == 0:
                raise XmcoreError(f"{source}: split '{split_name}' has no usable {m} items")
    name = recipe.data.name
    lacking = [m for m in data.modalities if m not in recipe.encoders]
    if lacking:
        raise XmcoreError(
            f"dataset '{name}' has modalities {', '.join(data.modalities)} but the recipe has no encoder for "
            f"{', '.join(lacking)}; add encoders.{lacking[0]}.name: ..."
        )


def environment(recipe: Recipe, plugins: Plugins, base_dir: Path | None = None) -> dict[str, Any]:
    import xmcore

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    used = {}
    for _, section in recipe.component_sections():
        info = plugins.infos.get(section.component.plugin)
        if info:
            used[info.distribution] = info.version
    return {
        "xmcore": xmcore.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "plugins": used,
        "recipe_dir": str(base_dir) if base_dir else None,  # where the recipe's relative paths resolve
        "packages": {p: version(p) for p in TRACKED_PACKAGES},
    }


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(run_dir: Path, resume: bool, resolved: dict[str, Any]) -> Path | None:
    """Create (or check) the run directory; return the checkpoint to resume from, if any.

    A directory without checkpoints (a run that failed, or was killed, before its first checkpoint)
    may be reused; one with checkpoints only with ``--resume``, and then only with the same recipe
    apart from its ``trainer``, ``logger`` and ``checkpoint`` sections.  ``--resume`` on a directory
    without a checkpoint starts the run from the beginning.
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        remove_partial_files(run_dir)
        if resume:
            if (run_dir / "recipe.yaml").is_file():
                _check_same_recipe(run_dir / "recipe.yaml", resolved)
            if not last.is_file():
                # (a best.ckpt without last.ckpt: killed between the two saves of the first validation)
                print(f"note: --resume: there is no {last} yet (the run stopped before its first checkpoint); "
                      "starting the run from the beginning", file=sys.stderr, flush=True)
                _keep_previous_log(run_dir / "logs" / "metrics.csv")
                run_dir.mkdir(parents=True, exist_ok=True)
                return None
            _keep_previous_log(run_dir / "logs" / "metrics.csv")
            return last
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise XmcoreError(
                f"run directory {run_dir} already holds a trained run; "
                "choose another --out, or pass --resume to continue that run"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XmcoreError(f"--out {run_dir}: cannot use it as a run directory ({exc.strerror or exc})") from None
    return None


def remove_partial_files(run_dir: Path) -> None:
    """Remove what a killed process left half-written in a run directory: the temporary files of
    :mod:`xmcore.io` and of checkpoint saves (``.<name>.<random>.tmp``), never renamed over their target."""
    if not run_dir.is_dir():
        return
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                if tmp.is_file():
                    tmp.unlink()


RESUMABLE_CHANGES = ("trainer", "logger", "checkpoint")  # recipe sections a resumed run may change


def _check_same_recipe(path: Path, resolved: dict[str, Any]) -> None:
    import yaml

    if not path.is_file():
        raise XmcoreError(f"--resume: {path} is missing; cannot tell which recipe the run was trained with")
    stored = yaml.safe_load(path.read_text(encoding="utf-8"))
    changed = sorted(
        key for key in set(stored) | set(resolved)
        if key not in RESUMABLE_CHANGES and stored.get(key) != resolved.get(key)
    )
    if changed:
        raise XmcoreError(
            f"--resume: the recipe differs from the run's {path} in: {', '.join(changed)}; "
            "only trainer.*, logger and checkpoint.* may change when resuming (start a new run for anything else)"
        )


def _keep_previous_log(csv: Path) -> None:
    """Lightning's CSV logger starts its file afresh: keep the log of the earlier part of the run beside it,
    less a last row cut short by a kill."""
    if csv.is_file():
        n = 1
        while (kept := csv.with_name(f"metrics.part{n}.csv")).exists():
            n += 1
        text = csv.read_bytes()
        if text and not text.endswith(b"\n"):
            atomic_write_bytes(csv, text[: text.rfind(b"\n") + 1])
        csv.rename(kept)


def embed_split(module, datamodule, recipe: Recipe, split, checkpoint: str | None) -> dict[str, Any]:
    """Embed every item of the evaluation split with the checkpoint's weights.

    A Trainer of its own, so that limits meant for training (``fast_dev_run``,
    ``limit_*_batches``) never cut the gallery short.
    """
    import pytorch_lightning as pl
    import torch

    trainer = pl.Trainer(
        accelerator=recipe.trainer.accelerator,
        devices=1,
        precision=recipe.trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=recipe.trainer.enable_progress_bar is not False,
    )
    loaders = datamodule.item_dataloaders(recipe.eval.split)
    predictions = trainer.predict(module, dataloaders=loaders, ckpt_path=checkpoint, return_predictions=True,
                                  weights_only=True)
    embeddings = {}
    for modality, batches in zip(split.modalities, predictions):
        index = torch.cat([i for i, _ in batches])
        emb = torch.cat([e for _, e in batches]).float()
        if len(index) != len(split.items[modality]):
            raise RunError(f"evaluation embedded {len(index)} of {len(split.items[modality])} {modality} items")
        embeddings[modality] = emb[torch.argsort(index)]
    return embeddings


def assemble(recipe: Recipe, base_dir: Path, run_dir: Path | None, training: bool = True):
    """Build the components, the LightningModule and the LightningDataModule for a recipe."""
    from xmcore.datamodule import RetrievalDataModule
    from xmcore.features import FeaturePassThrough, cacheable_modalities, precompute
    from xmcore.module import RetrievalModule

    built = build_components(recipe, base_dir, run_dir, training)
    modalities = built.data.modalities
    frozen = {m for m, e in recipe.encoders.items() if e.freeze and m in modalities}
    # Frozen features are precomputed for training only; embedding a checkpoint runs the encoders.
    precomputed = cacheable_modalities(frozen, built.augment) if training and recipe.cache.precompute else set()
    training_data = built.data  # built.data keeps the raw items (for reports)
    if precomputed:
        from xmcore import __version__
        from xmcore.cache import cache_dir

        print(f"encoding {', '.join(sorted(precomputed))} once with the frozen encoder", file=sys.stderr, flush=True)
        identities = {
            m: {"encoder": recipe.encoders[m].name, "params": recipe.encoders[m].resolved(), "modality": m, "xmcore": __version__}
            for m in precomputed
        }
        import torch

        # Encoding draws from the global RNG (each DataLoader seeds itself from it); a cache hit does not.
        # Fork it, so that training is the same whether the features were encoded or read.
        with torch.random.fork_rng(devices=[]):
            training_data = precompute(
                built.data, built.encoders, precomputed, recipe.eval.batch_size, recipe.data.num_workers,
                cache_root=cache_dir(recipe.cache.dir and str(BuildContext(base_dir=base_dir).path(recipe.cache.dir)))
                if recipe.cache.enabled else None,
                identities=identities,
                report=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
            )
    preprocessors = {m: FeaturePassThrough() if m in precomputed else e.preprocessor for m, e in built.encoders.items()}
    module = RetrievalModule(
        encoders=built.encoders,
        fusion=built.fusion,
        loss=built.loss,
        extra_losses=built.extra_losses,
        modalities=modalities,
        pairs=training_pairs(recipe, modalities),
        optimizer=recipe.optimizer.model_dump(),
        frozen=frozen,
        precomputed=precomputed,
        extra_checkpoint={"xmcore_recipe": recipe.resolved(), "xmcore_base_dir": str(base_dir)},
    )
    datamodule = RetrievalDataModule(
        training_data,
        preprocessors=preprocessors,
        augment=built.augment,
        batch_size=recipe.data.batch_size,
        eval_batch_size=recipe.eval.batch_size,
        num_workers=recipe.data.num_workers,
        seed=recipe.seed,
        caption_sampling=recipe.data.caption_sampling,
        group_by=recipe.loss.groups,
    )
    return built, module, datamodule


def evaluate_and_write(module, datamodule, built: Built, recipe: Recipe, out_dir: Path, checkpoint: str | None,
                       title: str, log: Path | None = None, plugins: Plugins | None = None) -> dict[str, float]:
    """Embed the evaluation split, rank, compute the metrics; write metrics.json, metrics.md and the report
    (its explained results need ``plugins``: the explainers)."""
    from xmcore.embeddings import save_embeddings
    from xmcore.explain.gallery import report_explainer
    from xmcore.report import write_report

    split = built.data.splits[recipe.eval.split]
    embeddings = embed_split(module, datamodule, recipe, split, checkpoint)
    try:
        rankings, metrics = evaluate(embeddings, split, built.metrics)
    except NonFiniteEmbeddings as exc:
        raise RunError(
            f"evaluation: {exc}: the model diverged (see val/loss in the run's logs/metrics.csv); "
            "lower optimizer.lr or set trainer.gradient_clip_val"
        ) from None
    if recipe.eval.folds:
        metrics.update(evaluate_folds(embeddings, split, built.metrics, recipe.eval.folds, recipe.eval.fold_size))
    write_json(out_dir / "metrics.json", metrics)
    atomic_write_text(out_dir / "metrics.md", f"# {title}\n\n" + metrics_table(metrics))
    normalised = {m: e.numpy() for m, e in rankings.embeddings.items()}
    save_embeddings(out_dir / "embeddings.npz", normalised, split)
    if recipe.eval.report:
        explainer = report_explainer(recipe.eval.explain, module.encoders, module.fusion, plugins, split.modalities[0])
        write_report(out_dir, title, metrics, rankings, normalised, split, log, explainer=explainer)
    return metrics


LOWER_IS_BETTER = ("loss", "medR", "meanR", "gap")


def _validation_callbacks(recipe: Recipe, built: Built, datamodule) -> tuple[list, str, str]:
    """The in-loop retrieval validation (if any) and what the best checkpoint is chosen by."""
    from xmcore.callbacks import RetrievalValidation, metric_ids

    has_val = "val" in built.data.splits
    monitor = recipe.eval.monitor
    if monitor == "loss" or not has_val or recipe.eval.every_n_epochs == 0:
        # The retrieval loss alone: a fusion's auxiliary loss (the adversarial discriminator's) is not the goal.
        return [], "val/retrieval_loss" if has_val else "train/retrieval_loss", "min"
    ids = metric_ids(built.metrics)
    if monitor not in ids:
        raise XmcoreError(
            f"eval.monitor: the metrics in eval.metrics produce no '{monitor}'; they produce: {', '.join(ids)} "
            "(or use 'loss')"
        )
    callback = RetrievalValidation(
        lambda: datamodule.item_dataloaders("val"), built.data.splits["val"], built.metrics, recipe.eval.every_n_epochs
    )
    return [callback], f"val/{monitor}", "min" if monitor.endswith(LOWER_IS_BETTER) else "max"


def build_trainer(recipe: Recipe, built: Built, datamodule, run_dir: Path, extra_callbacks: tuple = (), loggers=None):
    """The Lightning Trainer that ``xmcore run`` trains with, and its best-checkpoint callback; ``loggers``
    default to the recipe's (:func:`xmcore.loggers.build_loggers`)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    from xmcore.callbacks import AtomicCheckpointIO, EndOnMaxSteps, ExactResume
    from xmcore.loggers import build_loggers

    callbacks, monitor, mode = _validation_callbacks(recipe, built, datamodule)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        save_last=True,
        enable_version_counter=False,
        every_n_epochs=max(1, recipe.eval.every_n_epochs),
    )
    trainer_args = {k: v for k, v in recipe.trainer.model_dump().items() if v is not None}
    try:
        trainer = pl.Trainer(
            **trainer_args,
            default_root_dir=run_dir,
            logger=build_loggers(recipe, run_dir) if loggers is None else loggers,
            callbacks=[*callbacks, *extra_callbacks, checkpoint, *interval_checkpoints(recipe, run_dir),
                       LearningRateMonitor(logging_interval="step"), EndOnMaxSteps(), ExactResume()],
            plugins=[AtomicCheckpointIO()],
        )
    except (ValueError, TypeError, RuntimeError, ImportError) as exc:  # MisconfigurationException is a ValueError
        raise XmcoreError(f"trainer: Lightning refused the trainer section: {exc}") from None
    return trainer, checkpoint


def interval_checkpoints(recipe: Recipe, run_dir: Path) -> list:
    """``checkpoint.every_n_steps`` / ``checkpoint.every_minutes``: Lightning's ModelCheckpoint writing
    checkpoints/last.ckpt every N optimizer steps or every M minutes of training (on a step's end, not an
    epoch's last: :class:`xmcore.callbacks.IntervalCheckpoint`), so a run killed in mid-epoch resumes from
    there rather than from the last epoch's end."""
    from datetime import timedelta

    from xmcore.callbacks import IntervalCheckpoint

    every = [{"every_n_train_steps": recipe.checkpoint.every_n_steps}] if recipe.checkpoint.every_n_steps else []
    if recipe.checkpoint.every_minutes:
        every.append({"train_time_interval": timedelta(minutes=recipe.checkpoint.every_minutes)})
    return [IntervalCheckpoint(dirpath=run_dir / "checkpoints", save_top_k=0, save_last=True, enable_version_counter=False,
                            **when) for when in every]


def train_and_evaluate(
    recipe: Recipe, plugins: Plugins, base_dir: Path, run_dir: Path, resume: bool = False
) -> dict[str, float] | None:
    """Train and evaluate; the metrics, or ``None`` in a process other than rank 0."""
    import pytorch_lightning as pl

    from xmcore.loggers import build_loggers, log_final_metrics, log_recipe
    from xmcore.safeload import check_archive

    resolved = recipe.resolved()
    resume_from = prepare_run_dir(run_dir, resume, resolved)
    if resume_from:
        check_archive(resume_from, "the checkpoint --resume continues from")  # Lightning's load checks no checksum
    write_yaml(run_dir / "recipe.yaml", resolved)
    write_json(run_dir / "environment.json", environment(recipe, plugins, base_dir))
    loggers = build_loggers(recipe, run_dir)  # before the components: a logger's missing package fails fast

    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    built, module, datamodule = assemble(recipe, base_dir, run_dir)
    trainer, checkpoint = build_trainer(recipe, built, datamodule, run_dir, loggers=loggers)
    log_recipe(loggers, resolved)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    if trainer.global_rank != 0:  # under DDP every process runs this function; one evaluates and writes
        return None

    best = checkpoint.best_model_path or checkpoint.last_model_path or None  # none under fast_dev_run
    print(f"note: {evaluated_checkpoint(checkpoint, run_dir)}", file=sys.stderr, flush=True)
    title = f"{recipe.name}: {recipe.eval.split} split" + (f" ({Path(best).name})" if best else "")
    metrics = evaluate_and_write(module, datamodule, built, recipe, run_dir, best, title, run_dir / "logs" / "metrics.csv",
                                 plugins)
    log_final_metrics(loggers, metrics, recipe.eval.split, trainer.global_step)
    return metrics


def evaluated_checkpoint(checkpoint, run_dir: Path) -> str:
    """Which weights the final evaluation uses, and why, in words."""
    monitor = checkpoint.monitor
    if checkpoint.best_model_path:
        where = Path(checkpoint.best_model_path).resolve()
        where = where.relative_to(run_dir.resolve()) if where.is_relative_to(run_dir.resolve()) else where
        score = checkpoint.best_model_score
        value = f" ({float(score):.4g})" if score is not None else ""
        return f"evaluating {where}: the best {monitor}{value} of the validations during training"
    if checkpoint.last_model_path:
        return (f"evaluating checkpoints/last.ckpt: no validation ran, so there is no best checkpoint by {monitor} "
                "(is there a 'val' split, and eval.every_n_epochs within the epochs trained?)")
    return "evaluating the weights at the end of training: no checkpoint was written (trainer.fast_dev_run?)"


def best_checkpoint(run_dir: Path) -> Path:
    for name in ("best.ckpt", "last.ckpt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise XmcoreError(f"{run_dir}: no checkpoints/best.ckpt or last.ckpt; is it an xmcore run directory that trained?")


def rebuild_trained(run_dir: Path, checkpoint: Path, overrides, plugins: Plugins, out_dir: Path | None, flag: str):
    """A trained run's model with ``checkpoint``'s weights, over the data its recipe (with ``overrides``)
    names: the recipe, the built components, the module and the data module.  ``flag`` names what
    carried the overrides, for the message when they changed the model itself."""
    from xmcore.recipe import load_recipe, validate
    from xmcore.safeload import load_weights

    recipe = validate(load_recipe(run_dir / "recipe.yaml", list(overrides)), plugins)
    stored = load_weights(checkpoint, "a checkpoint")
    # Relative paths in the stored recipe were relative to the original recipe's folder.
    base_dir = Path(stored.get("xmcore_base_dir", run_dir))
    built, module, datamodule = assemble(recipe, base_dir, out_dir, training=False)
    try:
        module.load_model_weights(stored["state_dict"])
    except RuntimeError as exc:
        raise XmcoreError(
            f"{checkpoint}: its weights do not fit the model built from the recipe ({str(exc).splitlines()[0]}); "
            f"{flag} may change the data only, not the encoders or fusion"
        ) from None
    return recipe, built, module, datamodule


def evaluate_run(run_dir: Path, overrides: list[str], plugins: Plugins, out_dir: Path | None = None) -> tuple[dict, Path]:
    """Evaluate a trained run's best checkpoint on its recipe's evaluation split, or on other data (overrides)."""
    source = run_dir / "recipe.yaml"
    if not source.is_file():
        raise XmcoreError(f"{run_dir}: no recipe.yaml; expected a run directory written by `xmcore run`")
    checkpoint = best_checkpoint(run_dir)
    print(f"note: evaluating {checkpoint.relative_to(run_dir)}"
          + ("" if checkpoint.name == "best.ckpt" else " (the run has no best.ckpt: no validation ran)"), file=sys.stderr)
    out_dir = out_dir or run_dir / "evaluations" / time.strftime("%Y%m%d-%H%M%S")
    created = make_dirs(out_dir)
    try:
        recipe, built, module, datamodule = rebuild_trained(run_dir, checkpoint, overrides, plugins, out_dir, "overrides")
        write_yaml(out_dir / "recipe.yaml", recipe.resolved())
        title = f"{recipe.name}: {checkpoint.name} on the {recipe.eval.split} split"
        return evaluate_and_write(module, datamodule, built, recipe, out_dir, None, title, plugins=plugins), out_dir
    except BaseException:
        # A refused checkpoint or bad override must not leave an empty timestamped folder behind.
        remove_if_empty(created)
        raise


def make_dirs(path: Path) -> list[Path]:
    """``path.mkdir(parents=True, exist_ok=True)``, returning the folders it created, deepest first."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def remove_if_empty(created: list[Path]) -> None:
    """Remove the folders :func:`make_dirs` created (deepest first) while they hold nothing: a folder
    that existed before, or holds a file, is kept."""
    for folder in created:
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            folder.rmdir()
        except OSError:
            return
