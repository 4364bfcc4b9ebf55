"""CLI start-up: wall time of `xmcore --help`, `xmcore plugins` and `xmcore validate` against `python -c pass`.

Targets: --help <= 0.5 s, validate <= 2 s (torch and models are imported lazily; validation loads no weights).

    python bench/cli_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "xmcore --help": [sys.executable, "-m", "xmcore", "--help"],
    "xmcore plugins": [sys.executable, "-m", "xmcore", "plugins"],
    "xmcore validate quickstart": [sys.executable, "-m", "xmcore", "validate", str(ROOT / "recipes" / "quickstart.yaml")],
}


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    times = {name: statistics.median(wall(cmd) for _ in range(args.repeat)) for name, cmd in COMMANDS.items()}
    base = times["python -c pass"]
    for name, seconds in times.items():
        print(f"{name:28s} {seconds:6.3f} s  ({seconds / base:5.1f}x python -c pass)")


if __name__ == "__main__":
    main()
