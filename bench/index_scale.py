"""`xmcore index` at scale (issue 15), one section per part, each a function of its own:

embedding   items/s embedding one gallery on 1 and on 2 processes, side by side.  Both through the CLI and
            Lightning's predict (``trainer.accelerator=cpu trainer.devices=P``, ``trainer.strategy=ddp`` for
            P > 1: gloo on the CPU), the threads shared out evenly (OMP_NUM_THREADS = --threads / P); beside
            them one process on one thread, and the plain loop ``xmcore index`` runs without trainer keys.
            ``items/s`` is what the command reports: the items embedded from the moment every process is up
            (and has loaded its shards) to the last shard written; ``start-up s`` the time before that from
            the predict call (Lightning launching the other processes, each rebuilding the model and the
            gallery); ``command s`` the whole command's wall time (Python start-up, FAISS, the manifest).
            Each setting runs --repeat times, interleaved with the others, and the best is kept: on a shared
            machine the load moves.  The 2-process index is checked against the 1-process one (embeddings to
            1e-6).  The gallery is the quickstart's generated test split, ``data.test`` raised to --images
            pictures (5 captions each), embedded by a quickstart model trained here for one short epoch
            unless --run names one.

    python bench/index_scale.py                                   # every section
    python bench/index_scale.py --section embedding --images 1000
    python bench/index_scale.py --section embedding --run runs/quickstart-... --threads 2
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers


def xmcore(*args, threads: int, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, float]:
    """``xmcore ARGS`` in a process of its own (the same interpreter); the result and its wall time."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))
    cmd = [sys.executable, "-m", "xmcore", *map(str, args)]
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return result, seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trained_run(work: Path, threads: int) -> Path:
    """A quickstart model trained for one short epoch (the embedding cost does not depend on its quality)."""
    out = work / "run"
    _, seconds = xmcore("run", ROOT / "recipes" / "quickstart.yaml", "trainer.max_epochs=1", "data.train=512",
                        "data.val=64", "data.test=64", "eval.report=false", "--out", out, threads=threads)
    print(f"trained the quickstart model in {seconds:.0f} s: {out}", flush=True)
    return out


def load_average() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "unknown"


# ---------------------------------------------------------------------------------------------- sections


def section_embedding(args, work: Path) -> bool:
    """items/s on 1 and on 2 processes, side by side (best of --repeat, the runs interleaved: the machine's
    load moves); ``True`` when the two indexes agree."""
    run = Path(args.run) if args.run else trained_run(work, args.threads)
    gallery = ["--split", "test", "--data", f"data.test={args.images}", "--shard-size", str(args.shard_size)]
    configs = [("1, plain loop (no trainer keys)", 0, args.threads), ("1", 1, args.threads), ("2", 2, max(1, args.threads // 2))]
    if args.threads > 1:
        configs.insert(2, ("1", 1, 1))
    best: dict[int, tuple] = {}
    for attempt in range(args.repeat):
        for i, (name, processes, threads) in enumerate(configs):
            out = work / f"config{i}-{attempt}"
            trainer = ["trainer.accelerator=cpu", f"trainer.devices={processes}"] * (processes > 0)
            result, seconds = xmcore("index", run, "--out", out, *gallery, *trainer,
                                     *(["trainer.strategy=ddp"] * (processes > 1)), threads=threads)
            paced = _pace(result.stderr) if processes else None
            if i not in best or (paced and paced[2] > best[i][2][2]) or (not paced and seconds < best[i][3]):
                best[i] = (name, threads, paced, seconds)
    ones = [i for i, c in enumerate(configs) if c[1] == 1 and c[2] == args.threads]
    same = _same_embeddings(work / f"config{ones[0]}-0", work / f"config{len(configs) - 1}-0")
    _print_embedding(args, [best[i] for i in range(len(configs))], same)
    return same


def _pace(stderr: str) -> tuple[float, float, float, str]:
    """(start-up s, embedding s, items/s, items per process) from the line ``xmcore index`` ends with."""
    found = re.search(r"embedded \d+ items on \d+ processes in ([\d.]+) s \(([\d.]+) items/s; per process: ([^)]*)\), "
                      r"after ([\d.]+) s", stderr)
    return float(found[4]), float(found[1]), float(found[2]), found[3]


def _same_embeddings(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in (a / "embeddings").glob("*.npy"))
    return files == sorted(p.relative_to(b) for p in (b / "embeddings").glob("*.npy")) and all(
        np.allclose(np.load(a / f), np.load(b / f), atol=1e-6) for f in files)


def _print_embedding(args, rows, same: bool) -> None:
    items = args.images * 6
    print(f"\nembedding: {args.images:,} pictures + {5 * args.images:,} captions ({items:,} items), quickstart model "
          f"(test_resnet at 64 px, LSTM), {args.threads} threads in all, {os.cpu_count()} cores, best of "
          f"{args.repeat}, load average {load_average()}")
    print("| processes | threads each | start-up s | embedding s | items/s | items per process | command s |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, threads, paced, seconds in rows:
        emb = "{:.1f} | {:.1f} | {:.1f} | {}".format(*paced) if paced else "- | - | - | -"
        print(f"| {name} | {threads} | {emb} | {seconds:.1f} |")
    ones = [r for r in rows if r[0] == "1"]
    best_one = max(ones, key=lambda r: r[2][2])
    two = rows[-1][2][2]
    print(f"items/s, 2 processes / the best 1-process setting ({best_one[1]} thread{'s' * (best_one[1] > 1)}): "
          f"{two / best_one[2][2]:.2f}x" + "".join(f"; / 1 process on {r[1]} threads: {two / r[2][2]:.2f}x"
                                                   for r in ones if r is not best_one))
    print(f"the 2-process index {'equals' if same else 'DIFFERS FROM'} the 1-process one (embeddings to 1e-6)")


SECTIONS = {"embedding": section_embedding}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", default="all", choices=[*SECTIONS, "all"], help="the section to run (default: all)")
    parser.add_argument("--run", help="embedding: a trained quickstart run directory (default: train one here)")
    parser.add_argument("--images", type=int, default=1000, help="embedding: gallery pictures, 5 captions each (default 1000)")
    parser.add_argument("--shard-size", type=int, default=500, help="embedding: rows per shard (default 500)")
    parser.add_argument("--repeat", type=int, default=2, help="embedding: runs of each setting, the best kept (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="embedding: threads in all, shared out among the processes (default: the cores)")
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="index-scale-") as tmp:
        for name, section in SECTIONS.items():
            if args.section in (name, "all"):
                work = Path(tmp) / name
                work.mkdir()
                ok &= section(args, work)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
