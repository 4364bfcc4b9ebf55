"""Killed and resumed, nothing lost: ``kill -9`` of ``xmcore run``, ``xmcore index`` and a feature-cache write, then resume.

Each trial starts ``xmcore run recipes/quickstart.yaml`` in a subprocess, kills it with SIGKILL at a point
of its own, and runs ``xmcore run ... --resume`` on the same run directory until it finishes.  A trial
passes when

* the resumed run finishes (exit 0), every metric of its ``metrics.json`` within 1e-6 of an uninterrupted
  run's (the same recipe, seed and overrides; on the CPU);
* the run directory holds no half-written file: every ``.ckpt`` loads with ``torch.load(weights_only=True)``,
  every ``.json`` parses, and no temporary file (``.<name>.<random>.tmp``) is left.

Kill points: random points during training (a random fraction of the time between two saves, after the
n-th save of last.ckpt, n random: ``checkpoint.every_n_steps`` is small, so most kills land in mid-epoch,
and a point chosen by progress stays inside training however loaded the machine is); two while a
checkpoint is being written (polled: the moment a ``.last.ckpt.*.tmp`` or ``.best.ckpt.*.tmp`` exists), the
first checkpoint and one that replaces last.ckpt; and one half-way through the first epoch of a run
without ``checkpoint.every_n_steps``, which has no checkpoint yet (``--resume`` then starts it afresh).

Two more kill ``xmcore index`` of the uninterrupted run (once its first embeddings shard is written; once it
writes its FAISS indexes) and run it again: the index must equal an uninterrupted build's, file by file.
The last kills a run with a frozen (cached) image encoder while it writes a feature-cache entry; the next
run must find the entry unusable, encode again and end as an uninterrupted run does.

With ``--ddp`` every run (the uninterrupted one, the killed ones and their resumptions) is DDP on two CPU
processes (``trainer.accelerator=cpu trainer.devices=2 trainer.strategy=ddp``, gloo): a kill is SIGKILL
of the launching process and its rank-1 child at once (each run has a process group of its own; so does
every run without ``--ddp``, whose kill takes any DataLoader workers with it), and each rank must resume
its own shard of the epoch's order at the right batch.  The index and feature-cache trials are skipped
(they do not train under DDP).

    python bench/kill_resume.py                 # the quickstart at 600 training pictures, 2 epochs, 11 trials
    python bench/kill_resume.py --full          # the quickstart as written (2000 pictures)
    python bench/kill_resume.py --trials 12 --seed 3
    python bench/kill_resume.py --ddp           # the same kills under DDP, 2 CPU processes

Exit status 1 when a trial fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.yaml"
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "eval.report=false"]
TOLERANCE = 1e-6


STARTED: list[subprocess.Popen] = []


def xmcore(args: list[str], env: dict) -> subprocess.Popen:
    """``xmcore ARGS`` in a process group of its own (a kill takes its DDP ranks and loader workers with it);
    under DDP (``MASTER_ADDR`` set) with a rendezvous port of its own."""
    if "MASTER_ADDR" in env:
        from xmcore.testing import free_port

        env = dict(env, MASTER_PORT=str(free_port()))
    proc = subprocess.Popen([sys.executable, "-m", "xmcore", *map(str, args)], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(proc)
    return proc


def finish(proc: subprocess.Popen, what: str) -> str:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}:\n{err[-3000:]}")
    return err


def kill_when(proc: subprocess.Popen, ready, poll: float = 0.0005) -> float:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; the seconds since it started (or -1 if it ended first)."""
    start = time.perf_counter()
    while proc.poll() is None:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return time.perf_counter() - start
        time.sleep(poll)
    proc.communicate()
    return -1.0


def partial_files(folder: Path) -> list[str]:
    """What in a run directory is half-written: temporary files, checkpoints torch cannot load, unparsable JSON."""
    import torch

    bad = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(folder)
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            bad.append(f"{name} (temporary file left)")
        elif path.suffix == ".ckpt":
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 -- any failure to load is the finding
                bad.append(f"{name} ({type(exc).__name__})")
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError):
                bad.append(f"{name} (not JSON)")
    return bad


def checkpoint_step(run_dir: Path) -> str:
    import torch

    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return "none"
    try:
        return str(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # noqa: BLE001
        return "unreadable"


def writing_checkpoint(run_dir: Path, replacing: bool):
    """Ready while a checkpoint is being written (its temporary file exists); with ``replacing``, only
    once a last.ckpt exists, so the write under way is one that replaces it."""
    folder = run_dir / "checkpoints"

    def ready() -> bool:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return False
        writing = any(n.endswith(".tmp") and n.startswith((".last.ckpt", ".best.ckpt")) for n in names)
        return writing and (not replacing or "last.ckpt" in names)
    return ready


def after_save(run_dir: Path, n: int, delay: float):
    """Ready ``delay`` seconds after the ``n``-th write of checkpoints/last.ckpt: a point in training
    chosen by progress, not by the clock (which other load on the machine stretches)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    seen = {"count": 0, "stamp": None, "at": None}

    def ready() -> bool:
        if seen["at"] is None:
            try:
                stamp = last.stat().st_mtime_ns
            except FileNotFoundError:
                return False
            if stamp != seen["stamp"]:
                seen["stamp"], seen["count"] = stamp, seen["count"] + 1
                if seen["count"] >= n:
                    seen["at"] = time.perf_counter()
            return False
        return time.perf_counter() - seen["at"] >= delay
    return ready


def in_first_epoch(run_dir: Path, started: float, data: float, epoch_end: float):
    """Ready half-way through the first epoch: the uninterrupted run's pace from data_report.json to its
    first epoch's end (``data``, ``epoch_end``), scaled by how much later this run built its data."""
    seen = {}

    def ready() -> bool:
        now = time.perf_counter() - started
        if "data" not in seen:
            if (run_dir / "data_report.json").exists():
                seen["data"] = now
            return False
        return now >= seen["data"] + 0.5 * (epoch_end - data) * seen["data"] / data
    return ready


def largest_difference(a: dict, b: dict) -> float:
    if set(a) != set(b):
        return float("inf")
    return max(abs(float(a[k]) - float(b[k])) for k in a)


def trial(name: str, args: list[str], env: dict, run_dir: Path, reference: dict, condition, kill_note: str) -> dict:
    started = time.perf_counter()
    proc = xmcore(["run", *args, "--out", run_dir], env)
    at = kill_when(proc, condition(run_dir, started))
    left = [p.name for p in (run_dir / "checkpoints").glob(".*.tmp")] if (run_dir / "checkpoints").is_dir() else []
    found = checkpoint_step(run_dir)
    error = ""
    try:
        err = finish(xmcore(["run", *args, "--out", run_dir, "--resume"], env), "the resumed run")
    except RuntimeError as exc:
        err, error = "", str(exc).splitlines()[0]
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    diff = largest_difference(metrics, reference) if metrics else float("inf")
    bad = partial_files(run_dir)
    return {
        "trial": name, "killed at s": f"{at:.1f}" if at >= 0 else "ended first",
        "what was killed": kill_note + (" (tmp left: " + ", ".join(left) + ")" if left else ""),
        "last.ckpt step": found, "restarted": "yes" if "starting the run from the beginning" in err else "no",
        "max |diff|": f"{diff:.1e}", "bad files": len(bad), "ok": at >= 0 and not error and diff <= TOLERANCE
        and not bad, "seconds": time.perf_counter() - started, "problems": bad + ([error] if error else []),
    }


def timeline(args: list[str], env: dict, run_dir: Path) -> tuple[dict, float, list[float], float]:
    """The uninterrupted run: its metrics, when its data was built (data_report.json), when each
    checkpoints/last.ckpt was written (training ends at the last one), and its total time."""
    start = time.perf_counter()
    proc = xmcore(["run", *args, "--out", run_dir], env)
    last = run_dir / "checkpoints" / "last.ckpt"
    data, saves, seen = None, [], None
    while proc.poll() is None:
        if data is None and (run_dir / "data_report.json").exists():
            data = time.perf_counter() - start
        try:
            stamp = last.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != seen:
            seen = stamp
            saves.append(time.perf_counter() - start)
        time.sleep(0.005)
    finish(proc, "the uninterrupted run")
    if not saves or data is None:
        raise RuntimeError("the uninterrupted run wrote no data_report.json or checkpoints/last.ckpt")
    return json.loads((run_dir / "metrics.json").read_text()), data, saves, time.perf_counter() - start


def cache_trial(args: list[str], env: dict, work: Path) -> dict:
    """A kill while the feature cache writes an entry; the next run must rebuild it and match a clean run."""
    frozen = [*args, "encoders.image.freeze=true"]
    clean_env = dict(env, XMCORE_CACHE_DIR=str(work / "cache-clean"))
    finish(xmcore(["run", *frozen, "--out", work / "cache-clean-run"], clean_env), "the clean cached run")
    reference = json.loads((work / "cache-clean-run" / "metrics.json").read_text())
    root = work / "cache-killed"
    killed_env = dict(env, XMCORE_CACHE_DIR=str(root))
    started = time.perf_counter()

    def writing() -> bool:
        try:
            return any(".partial-" in n for n in os.listdir(root))
        except FileNotFoundError:
            return False

    at = kill_when(xmcore(["run", *frozen, "--out", work / "cache-killed-run"], killed_env), writing)
    partial = sorted(n for n in os.listdir(root) if ".partial-" in n) if root.is_dir() else []
    err = finish(xmcore(["run", *frozen, "--out", work / "cache-killed-run", "--resume"], killed_env), "the rerun")
    metrics = json.loads((work / "cache-killed-run" / "metrics.json").read_text())
    diff = largest_difference(metrics, reference)
    left = sorted(n for n in os.listdir(root) if ".partial-" in n)
    rebuilt = "encoded" in err
    return {
        "trial": "feature cache", "killed at s": f"{at:.1f}" if at >= 0 else "ended first",
        "what was killed": f"writing a cache entry ({len(partial)} partial folder(s) left)",
        "last.ckpt step": "-", "restarted": "rebuilt" if rebuilt else "NOT rebuilt", "max |diff|": f"{diff:.1e}",
        "bad files": len(left), "ok": at >= 0 and bool(partial) and rebuilt and diff <= TOLERANCE and not left,
        "seconds": time.perf_counter() - started, "problems": [f"{n} left" for n in left],
    }


def index_trials(run_dir: Path, env: dict, work: Path) -> list[dict]:
    """``xmcore index`` of the uninterrupted run's test split, killed once its first embeddings shard is
    written and once it writes its FAISS indexes, then run again: the index must equal an uninterrupted
    build's (embeddings, metadata and FAISS files by checksum), verify, and hold no half-written file."""
    from xmcore.search import verify

    command = ["index", run_dir, "--split", "test", "--shard-size", "200"]
    finish(xmcore([*command, "--out", work / "index-clean"], env), "the uninterrupted index")
    reference = json.loads((work / "index-clean" / "manifest.json").read_text())["checksums"]
    rows = []
    for phase, mark in (("index: embedding", "building.json"), ("index: FAISS build", "faiss")):
        out = work / phase.replace(": ", "-").replace(" ", "-")
        started = time.perf_counter()
        at = kill_when(xmcore([*command, "--out", out], env), lambda o=out, m=mark: (o / m).exists())
        state = json.loads((out / "building.json").read_text()) if (out / "building.json").is_file() else {}
        found = f"{len(state.get('shards', {}))} shards"
        error = ""
        try:
            err = finish(xmcore([*command, "--out", out], env), "the rerun")
        except RuntimeError as exc:
            err, error = "", str(exc).splitlines()[0]
        ours = json.loads((out / "manifest.json").read_text())["checksums"] if (out / "manifest.json").is_file() else {}
        differ = [n for n, d in reference.items() if n.startswith(("embeddings/", "metadata/", "faiss/")) and ours.get(n) != d]
        bad = (verify(out) if ours else ["manifest.json missing"]) + [
            str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == "building.json"]
        rows.append({
            "trial": phase, "killed at s": f"{at:.1f}" if at >= 0 else "ended first",
            "what was killed": f"xmcore index, once {mark} existed ({found} written)", "last.ckpt step": "-",
            "restarted": "resumed" if "resuming:" in err else "started over", "max |diff|": f"{len(differ)} files differ",
            "bad files": len(bad), "ok": at >= 0 and not error and not differ and not bad,
            "seconds": time.perf_counter() - started, "problems": differ + bad + ([error] if error else []),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the quickstart as written (2000 training pictures)")
    parser.add_argument("--train", type=int, default=600, help="training pictures, 5 captions each (ignored with --full)")
    parser.add_argument("--trials", type=int, default=5, help="kills at random points (besides the fixed ones)")
    parser.add_argument("--every-n-steps", type=int, default=3, help="checkpoint.every_n_steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--no-cache", action="store_true", help="skip the feature-cache trial")
    parser.add_argument("--no-index", action="store_true", help="skip the xmcore index trials")
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    parser.add_argument("--ddp", action="store_true", help="every run under DDP on 2 CPU processes (gloo); "
                        "implies --no-index --no-cache")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    size = [] if args.full else [f"data.train={args.train}"]
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"] if args.ddp else []
    recipe_args = [RECIPE, *size, *QUIET, *ddp, f"checkpoint.every_n_steps={args.every_n_steps}"]
    work = args.keep or Path(tempfile.mkdtemp(prefix="xmcore-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", XMCORE_CACHE_DIR=str(work / "cache"))
    env.setdefault("OMP_NUM_THREADS", "1")
    if args.ddp:
        env["MASTER_ADDR"] = "127.0.0.1"
    command = "python bench/kill_resume.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{command}\nrecipe: xmcore run {' '.join(str(a) for a in recipe_args)}", flush=True)

    reference, data, saves, total = timeline(recipe_args, env, work / "uninterrupted")
    first, end = saves[0], saves[-1]
    print(f"uninterrupted run: {total:.1f} s; data built at {data:.1f} s, {len(saves)} checkpoint saves from "
          f"{first:.1f} s to {end:.1f} s (the end of training)", flush=True)

    rng = random.Random(args.seed)
    # (name, recipe arguments, kill condition maker, what is killed); a kill condition gets the trial's start time
    no_interval = [a for a in recipe_args if not str(a).startswith("checkpoint.")]
    plan = [("first epoch, no interval", no_interval, lambda d, t0: in_first_epoch(d, t0, data, saves[len(saves) // 2]),
             "the first epoch, checkpoint.every_n_steps unset"),
            ("first checkpoint write", recipe_args, lambda d, t0: writing_checkpoint(d, False),
             "writing the first checkpoint"),
            ("checkpoint replacing last.ckpt", recipe_args, lambda d, t0: writing_checkpoint(d, True),
             "writing a checkpoint over last.ckpt")]
    gap = (end - first) / max(1, len(saves) - 1)  # seconds between two saves of the uninterrupted run
    for i in range(args.trials):
        after, fraction = rng.randrange(1, len(saves)), rng.random()
        plan.append((f"random {i + 1}", recipe_args, lambda d, t0, n=after, f=fraction: after_save(d, n, f * gap),
                     f"training, {fraction * gap:.2f} s after save {after} of {len(saves)}"))
    rows = []
    for name, trial_args, condition, note in plan:
        run_dir = work / name.replace(" ", "-").replace(",", "")
        row = trial(name, trial_args, env, run_dir, reference, condition, note)
        rows.append(row)
        print(f"  {name}: {'ok' if row['ok'] else 'FAIL'} (killed at {row['killed at s']} s, last.ckpt step "
              f"{row['last.ckpt step']}, max |diff| {row['max |diff|']}) {'; '.join(row['problems'])}", flush=True)
    if not (args.no_index or args.ddp):
        for row in index_trials(work / "uninterrupted", env, work):
            rows.append(row)
            print(f"  {row['trial']}: {'ok' if row['ok'] else 'FAIL'} {'; '.join(row['problems'])}", flush=True)
    if not (args.no_cache or args.ddp):
        row = cache_trial(recipe_args, env, work)
        rows.append(row)
        print(f"  feature cache: {'ok' if row['ok'] else 'FAIL'} {'; '.join(row['problems'])}", flush=True)

    columns = ["trial", "killed at s", "what was killed", "last.ckpt step", "restarted", "max |diff|", "bad files", "ok"]
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) if c != "ok" else ("yes" if row[c] else "NO") for c in columns) + " |")
    passed = sum(r["ok"] for r in rows)
    print(f"\n{passed}/{len(rows)} trials passed (metrics within {TOLERANCE:g} of the uninterrupted run, no "
          f"half-written file); {time.perf_counter() - began:.0f} s in all, load average {os.getloadavg()[0]:.1f}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:  # interrupted: no run left behind
        for proc in STARTED:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
