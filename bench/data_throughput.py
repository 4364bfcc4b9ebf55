"""Data throughput: training pairs/s from the data pipeline alone against the model's pairs/s.

The data side iterates the recipe's training DataLoader (reading, decoding, augmenting,
preprocessing, collating) with nothing else to do; the model side runs training steps
(forward, backward, AdamW) on one batch already in memory.  A ratio data/model above 1 means the
loader keeps up at that worker count; below 1, loading is the bottleneck: raise data.num_workers.

    python bench/data_throughput.py                                  # quickstart, the recipe's workers
    python bench/data_throughput.py --workers 0,1,2 --batches 30
    python bench/data_throughput.py --recipe recipes/flickr30k.yaml  # your data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from xmcore.plugins import load_plugins  # noqa: E402
from xmcore.recipe import load_recipe, validate  # noqa: E402
from xmcore.run import assemble  # noqa: E402


def data_rate(datamodule, batches: int) -> float:
    loader = iter(datamodule.train_dataloader())
    next(loader)  # workers start, first batch
    start, pairs = time.perf_counter(), 0
    for _ in range(batches):
        pairs += len(next(loader)["group"])
    return pairs / (time.perf_counter() - start)


def model_rate(module, datamodule, batches: int) -> float:
    batch = next(iter(datamodule.train_dataloader()))
    a, b = module.modalities
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    module.train()

    def step():
        za = F.normalize(module.fusion(module.features(a, batch[a]), a), dim=-1)
        zb = F.normalize(module.fusion(module.features(b, batch[b]), b), dim=-1)
        loss = module.loss(za, zb, batch["group"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        step()
    return batches * len(batch["group"]) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> list[tuple[int, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default: the recipe's)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    args = parser.parse_args(argv)

    plugins = load_plugins()
    loaded = load_recipe(args.recipe, args.overrides)
    recipe = validate(loaded, plugins)
    counts = [int(w) for w in args.workers.split(",")] if args.workers else [recipe.data.num_workers]
    pl.seed_everything(recipe.seed, verbose=False)
    _, module, datamodule = assemble(recipe, loaded.base_dir, None)
    model = model_rate(module, datamodule, args.batches)
    rows = []
    for workers in counts:
        datamodule.num_workers = workers
        data = data_rate(datamodule, args.batches)
        rows.append((workers, data, model))
        verdict = "the loader keeps up" if data >= model else "loading is the bottleneck"
        print(f"data throughput ({Path(args.recipe).name}, batch {recipe.data.batch_size}, {workers} workers): "
              f"data {data:8.1f} pairs/s, model {model:7.1f} pairs/s, ratio {data / model:5.2f} ({verdict})", flush=True)
    return rows


if __name__ == "__main__":
    main()
