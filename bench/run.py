"""Run every benchmark, one after another, each in a process of its own, and print their ratios.

    python bench/run.py                    # small sizes: a few minutes on 2 cores
    python bench/run.py --full             # the sizes quoted in the README (over an hour)
    python bench/run.py --only overhead,cli_startup

Each benchmark is also a script of its own (bench/<name>.py --help) with flags for other sizes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (arguments at the small size, arguments at the full size)
BENCHMARKS = {
    "overhead": (["--steps", "30", "--rounds", "2"], ["--steps", "60", "--rounds", "5"]),
    "feature_cache": (["--train", "200", "--epochs", "2"], ["--full"]),
    "eval_scale": (["--side-by-side", "5000", "--large", "20000", "--by-class", "20000"], []),
    "cli_startup": (["--repeat", "3"], ["--repeat", "5"]),
    "data_throughput": (["--batches", "10"], ["--batches", "30", "--workers", "0,1,2"]),
    "audio_throughput": (["--batches", "10", "--clips", "100"], ["--batches", "30", "--clips", "500"]),
    "ann": (["--n", "50000"], ["--n", "1000000"]),
    "fusion": ([], ["--full"]),
    "explain": (["--pairs", "500", "--captions", "200", "--faithfulness", "100", "--repeat", "8", "--only", "pictures"], []),
    "fuzz_recipes": (["--examples", "500"], []),
    "kill_resume": (["--trials", "2"], ["--full"]),
    "index_scale": (["--images", "200", "--repeat", "1", "--vectors", "200000"], []),
    "serve_load": (["--seconds", "10", "--rounds", "1", "--clients", "8"], []),  # a quickstart index, built once
}
# the lines each benchmark prints that hold its result
RESULT_MARKERS = ("ratio", "faster", "x python", "peak", "streaming", "full matrix", "queries/s", "bar:", "ms/clip", "load average",
                  "cases in", "  exit", "  other", "trials passed", "PASS", "FAIL", "items/s, 2 processes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the README's sizes")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    summary, failed = [], []
    for name in chosen:
        small, full = BENCHMARKS[name]
        cmd = [sys.executable, str(HERE / f"{name}.py"), *(full if args.full else small)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        print(result.stdout, end="", flush=True)
        if result.returncode != 0:
            failed.append(name)
            print(f"   {name} failed (exit {result.returncode}):\n{result.stderr[-2000:]}", flush=True)
            continue
        lines = [line for line in result.stdout.splitlines() if any(m in line for m in RESULT_MARKERS)]
        summary.append((name, time.perf_counter() - start, lines))

    print("\n== summary")
    for name, seconds, lines in summary:
        print(f"{name} ({seconds:.0f} s)")
        for line in lines:
            print(f"    {line.strip()}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
