"""Framework overhead: a training step of `xmcore run` against a hand-written PyTorch loop.

Both sides train the same model (built from the recipe with the same seed, so the same initial
weights), on the same DataLoader (same dataset, batch size, collate), with AdamW and the same
warm-up + cosine schedule.  The xmcore side is the Lightning Trainer exactly as `xmcore run`
configures it (CSV logger, learning-rate monitor, checkpointing, progress bar); the plain side is
a ``for batch in loader`` loop.  A step is the time from one batch's start to the next's (data
loading, forward, backward, optimiser step, logging), measured after a warm-up; rounds alternate
between the two sides so that drift on the machine hits both.  Target: ratio <= 1.10.

    python bench/overhead.py                       # quickstart recipe, 3 rounds x 40 steps
    python bench/overhead.py --steps 100 --rounds 5 --recipe recipes/quickstart.yaml
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from xmcore.plugins import load_plugins  # noqa: E402
from xmcore.recipe import load_recipe, validate  # noqa: E402
from xmcore.run import assemble, build_trainer  # noqa: E402

WARMUP = 5


class StepTimer(pl.Callback):
    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= trainer.max_steps:
            self.starts.append(time.perf_counter())


def step_times(starts: list[float]) -> list[float]:
    return [b - a for a, b in zip(starts, starts[1:])][WARMUP:]


def build(recipe, base_dir):
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    return assemble(recipe, base_dir, None)


def xmcore_round(recipe, base_dir, steps: int) -> list[float]:
    built, module, datamodule = build(recipe, base_dir)
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="xmcore-bench-") as run_dir:
        trainer, _ = build_trainer(recipe, built, datamodule, Path(run_dir), extra_callbacks=(timer,))
        trainer.fit(module, datamodule=datamodule)
    return step_times(timer.starts)


def plain_round(recipe, base_dir, steps: int) -> list[float]:
    """What one would write by hand with the same parts: no framework in the loop."""
    built, module, datamodule = build(recipe, base_dir)
    encoders, fusion, loss_fn = module.encoders, module.fusion, module.loss
    a, b = module.modalities
    params = [p for p in module.parameters() if p.requires_grad]
    cfg = recipe.optimizer
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    total, warmup = steps, min(cfg.warmup_steps, steps - 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
    )
    module.train()
    starts = []
    for step, batch in enumerate(datamodule.train_dataloader()):
        starts.append(time.perf_counter())
        if step == steps:
            break
        za = F.normalize(fusion(encoders[a](batch[a]), a), dim=-1)
        zb = F.normalize(fusion(encoders[b](batch[b]), b), dim=-1)
        loss = loss_fn(za, zb, batch["group"])
        aux, _ = fusion.auxiliary_loss({a: za, b: zb}, step / total)
        if aux is not None:
            loss = loss + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        float(loss.detach())  # as Lightning reads the loss for its progress bar
    return step_times(starts)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round (after a warm-up of 5)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    plugins = load_plugins()
    steps = args.steps + WARMUP
    loaded = load_recipe(args.recipe, [])
    batch = loaded.data["data"].get("batch_size", 64)
    # one epoch holds every timed step, so no epoch-end validation falls between them
    overrides = [f"data.train={batch * (steps + 1)}", f"trainer.max_steps={steps}", "trainer.max_epochs=1",
                 "eval.every_n_epochs=0", "data.val=64"]
    loaded = load_recipe(args.recipe, overrides)
    recipe = validate(loaded, plugins)

    plain, ours = [], []
    for r in range(args.rounds):
        plain.append(statistics.median(plain_round(recipe, loaded.base_dir, steps)))
        ours.append(statistics.median(xmcore_round(recipe, loaded.base_dir, steps)))
        print(f"  round {r + 1}: plain {plain[-1] * 1000:7.1f} ms/step   xmcore run {ours[-1] * 1000:7.1f} ms/step",
              flush=True)
    ratio = statistics.median(ours) / statistics.median(plain)
    print(f"framework overhead ({Path(args.recipe).name}, batch {batch}): plain {statistics.median(plain) * 1000:.1f} ms/step, "
          f"xmcore run {statistics.median(ours) * 1000:.1f} ms/step, ratio {ratio:.3f} (target <= 1.10)")
    return ratio


if __name__ == "__main__":
    main()
