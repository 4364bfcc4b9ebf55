"""``xmcore sweep``: run a grid of overrides, one run directory per cell, and compare the settings.

    xmcore sweep recipes/quickstart.yaml fusion.name=linear,nonlinear,adversarial seed=0,1,2

A key with several values is an axis of the grid; a key with one value (``trainer.max_steps=3``)
is fixed: it applies to every cell and names no cell or column.  Cells run one after another in
this process (frozen-encoder features come from the cache after the first).  A failed cell is
recorded with its error and the sweep goes on.  The comparison groups cells by every axis except
``seed`` and reports each metric's mean, and its standard deviation over the seeds when a setting
ran more than once.

A grid of more than ``MAX_RUNS`` cells is refused before anything runs (``a=1,2,...,100`` crossed
with another long axis is more often a typo than a plan); ``--max-runs N`` raises the bound.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from xmcore.errors import RecipeError, XmcoreError
from xmcore.io import atomic_write_text, write_json

MAX_RUNS = 256  # the most cells a sweep runs unless --max-runs says more


def split_values(raw: str) -> list[str]:
    """``a,b,[1,2]`` -> ``["a", "b", "[1,2]"]``: commas inside brackets or braces do not split."""
    parts, depth, current = [], 0, ""
    for ch in raw:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def grid(axes: list[str], max_runs: int = MAX_RUNS) -> tuple[list[str], list[list[str]]]:
    """The axes (keys given several values) and, per cell, all its overrides in the order given
    (the cartesian product of the axes; keys given one value are in every cell).  A product of more
    than ``max_runs`` cells is refused before it is built."""
    keys, values, problems = [], [], []
    for axis in axes:
        key, sep, raw = axis.partition("=")
        if not sep or not key:
            problems.append(f"sweep axis '{axis}': expected KEY=V1,V2,... (or KEY=VALUE for a key fixed in every cell)")
            continue
        if key in keys:
            problems.append(f"sweep axis '{axis}': {key} is given twice; give all its values once: {key}=V1,V2,...")
            continue
        keys.append(key)
        values.append(split_values(raw))
    if problems:
        raise RecipeError(problems)
    swept = [k for k, v in zip(keys, values) if len(v) > 1]
    cells = math.prod(len(v) for v in values)
    if cells > max_runs:
        sizes = " x ".join(f"{k} ({len(v)} values)" for k, v in zip(keys, values) if len(v) > 1)
        raise XmcoreError(f"sweep: the grid has {cells:,} cells ({sizes}), more than the bound of {max_runs:,} runs; "
                          f"check the axes for a typo, or run them all with --max-runs {cells}")
    return swept, [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)]


def run_sweep(recipe_path: str, axes: list[str], out_dir: Path | None, plugins,
              max_runs: int = MAX_RUNS) -> tuple[Path, list[dict[str, Any]]]:
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import train_and_evaluate

    keys, cells = grid(axes, max_runs)
    fixed = {k: v for k, v in (o.split("=", 1) for o in cells[0]) if k not in keys}
    # Every cell is validated before the first one trains: a typo fails the sweep at once.
    recipes = []
    for overrides in cells:
        loaded = load_recipe(recipe_path, overrides)
        recipes.append((overrides, loaded, validate(loaded, plugins)))
    name = recipes[0][2].name
    out_dir = out_dir or Path("runs") / f"sweep-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for n, (overrides, loaded, recipe) in enumerate(recipes, start=1):
        cell = {k: v for k, v in (o.split("=", 1) for o in overrides) if k in keys}
        cell_dir = out_dir / (",".join(f"{k}={v}".replace("/", "_") for k, v in cell.items()) or "all")
        print(f"[{n}/{len(recipes)}] {' '.join(f'{k}={v}' for k, v in cell.items()) or ' '.join(overrides)}",
              file=sys.stderr, flush=True)
        entry: dict[str, Any] = {"cell": cell, "run_dir": str(cell_dir)}
        try:
            entry["metrics"] = train_and_evaluate(recipe, plugins, loaded.base_dir, cell_dir)
        except Exception as exc:  # noqa: BLE001 -- a failed cell is reported, the sweep goes on
            entry["error"] = f"{type(exc).__name__}: {exc}"
            if cell_dir.exists():
                atomic_write_text(cell_dir / "error.txt", traceback.format_exc())
            print(f"  failed: {entry['error']}", file=sys.stderr, flush=True)
        results.append(entry)
        write_json(out_dir / "sweep.json", {"recipe": str(recipe_path), "axes": axes, "fixed": fixed, "cells": results})
    summarize(out_dir, keys, results, fixed)
    return out_dir, results


def summarize(out_dir: Path, keys: list[str], results: list[dict[str, Any]], fixed: dict[str, str] | None = None) -> str:
    from xmcore.evaluation import format_metric

    by = [k for k in keys if k != "seed"]
    groups: dict[tuple, list[dict[str, float]]] = {}
    failed = []
    for r in results:
        setting = tuple(r["cell"][k] for k in by)
        if "metrics" in r and r["metrics"]:
            groups.setdefault(setting, []).append(r["metrics"])
        else:
            failed.append(r)
            groups.setdefault(setting, [])
    ids = list(dict.fromkeys(k for runs in groups.values() for m in runs for k in m))
    header = [*by, "runs", *ids]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    table: list[dict[str, Any]] = []
    for setting, runs in groups.items():
        stats = {}
        for i in ids:
            values = [m[i] for m in runs if i in m]
            if values:
                mean = sum(values) / len(values)
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
                stats[i] = {"mean": mean, "std": std, "n": len(values)}
        table.append({"setting": dict(zip(by, setting)), "runs": len(runs), "metrics": stats})
        cells = [*setting, str(len(runs))] + [_mean_std(stats[i], i, format_metric) if i in stats else "" for i in ids]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if failed:
        text += "\nFailed cells:\n" + "".join(f"- {r['cell']}: {r['error']}\n" for r in failed)
    write_json(out_dir / "summary.json", table)
    head = f"# Sweep over {', '.join(keys) or 'one setting'}\n\n"
    if fixed:
        head += "In every cell: " + ", ".join(f"`{k}={v}`" for k, v in fixed.items()) + "\n\n"
    atomic_write_text(out_dir / "sweep.md", head + text + "\n![chart](sweep.png)\n")
    _chart(out_dir / "sweep.png", by, table)
    return text


def _mean_std(stat: dict[str, Any], metric: str, fmt) -> str:
    """``mean ± std`` over the runs of a setting; the mean alone when it ran once (no spread to show)."""
    if stat["std"] is None:
        return fmt(stat["mean"], metric)
    return f"{fmt(stat['mean'], metric)} ± {fmt(stat['std'], metric)}"


def _chart(path: Path, by: list[str], table: list[dict[str, Any]]) -> None:
    from xmcore.report import _plt, _save

    metric = next((i for i in ("rsum", "i2t/R@1") if any(i in t["metrics"] for t in table)), None)
    if metric is None:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(table)), 4))
    labels = [", ".join(f"{v}" for v in t["setting"].values()) or "all" for t in table]
    means = [t["metrics"].get(metric, {}).get("mean", 0) for t in table]
    stds = [t["metrics"].get(metric, {}).get("std") or 0 for t in table]
    ax.bar(range(len(table)), means, yerr=stds, capsize=4, color="#1f77b4")
    ax.set_xticks(range(len(table)), labels, rotation=20, ha="right")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(f"sweep over {', '.join(by) or 'seed'}")
    fig.tight_layout()
    _save(fig, path)
