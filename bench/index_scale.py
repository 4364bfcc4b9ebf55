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
memory      a memory-bounded IVF-PQ build (xmcore.search.ivf, inverted lists on disk) of --vectors synthetic
            embeddings (clustered as in bench/ann.py), written as .npy shards one at a time: its peak RSS
            against --max-memory, recall@10 and queries/s against exact search (a flat index per shard, the
            top k merged by faiss.ResultHeap) on the same data, and the peak of the in-memory build beside it.
            Bars (issue 15): peak <= 2 GB, recall@10 >= 0.90 at >= 20x exact's QPS, at 5M x 256.
join        rank 0 joining the metadata parts a build on several processes wrote (--rows synthetic lines):
            peak RSS of the join as it was (each part read whole) and as xmcore does it (copied in blocks).

    python bench/index_scale.py                                   # every section
    python bench/index_scale.py --section embedding --images 1000
    python bench/index_scale.py --section embedding --run runs/quickstart-... --threads 2
    python bench/index_scale.py --section memory --threads 1 --work /tmp/vectors   # 5M x 256: 17 min here
    python bench/index_scale.py --section memory --vectors 500000 --threads 1
    python bench/index_scale.py --section join --rows 2000000
"""

from __future__ import annotations

import argparse
import json
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


def section_memory(args, work: Path) -> bool:
    """A memory-bounded, on-disk IVF-PQ build of --vectors synthetic embeddings (clustered as in bench/ann.py)
    written as shards on disk, against exact search and against the in-memory build of the same vectors;
    ``True`` when the bars hold: build peak <= --max-memory, recall@10 >= 0.90 at >= 20x exact's QPS.

    Each step runs in a process of its own, one after another, so that its peak RSS (ru_maxrss) is its own.
    The in-memory build reads the shards as ``xmcore index`` does without these flags (every shard loaded,
    then concatenated) and adds them to the bounded build's trained (empty) index: its peak is what holding
    the vectors costs; training again would only add its sample (0.3 GB at 5M)."""
    from xmcore.search.ivf import parse_memory

    budget = parse_memory(args.max_memory)
    if args.work:  # kept: a rerun reuses the shards, the queries and exact search's answers
        work = Path(args.work)
    shards, counts = _write_vector_shards(work / "embeddings", args.vectors, args.dim, args.rows_per_shard)
    if not (work / "queries.npy").is_file():
        np.save(work / "queries.npy", _bench_vectors(args.queries, args.dim, seed=1))
    queries = np.load(work / "queries.npy")
    print(f"\nmemory: {args.vectors:,} vectors of d={args.dim} in {len(shards)} shards of {args.rows_per_shard:,}, "
          f"{len(queries)} queries, --max-memory {args.max_memory}, {args.threads} thread(s) a process", flush=True)
    exact = _child("exact", work, args)
    bounded = _child("bounded", work, args)
    print(bounded["why"], flush=True)
    in_memory = _child("in_memory", work, args)
    truth = np.load(work / "truth.npy")
    rows = _search_rows(work / "bounded", bounded, queries, truth, exact["qps"], args.threads)
    return _print_memory(args, budget, exact, bounded, in_memory, rows)


def _bench_vectors(n: int, d: int, seed: int) -> np.ndarray:
    sys.path.insert(0, str(ROOT / "bench"))
    from ann import embeddings  # clustered near a 32-dimensional subspace, as trained embeddings are

    return embeddings(n, d, seed=seed)


def _write_vector_shards(folder: Path, n: int, d: int, rows: int) -> tuple[list[Path], list[int]]:
    """``n`` vectors as .npy shards of ``rows``, made one shard at a time (never all in memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    files, counts = [], []
    if len(list(folder.glob("vectors-*.npy"))) == -(-n // rows):
        return _shard_list(folder.parent)
    started = time.perf_counter()
    for k, lo in enumerate(range(0, n, rows)):
        m = min(rows, n - lo)
        files.append(folder / f"vectors-{k:05d}.npy")
        np.save(files[-1], _bench_vectors(m, d, seed=1000 + k))
        counts.append(m)
    print(f"wrote {n:,} vectors in {time.perf_counter() - started:.0f} s", flush=True)
    return files, counts


def _shard_list(work: Path) -> tuple[list[Path], list[int]]:
    files = sorted((work / "embeddings").glob("vectors-*.npy"))
    return files, [int(np.load(f, mmap_mode="r").shape[0]) for f in files]


def _child(kind: str, work: Path, args) -> dict:
    return _children([(kind, work, args)])[0]


def _children(jobs) -> list[dict]:
    """Each job in a fresh process (its peak RSS is its own: ru_maxrss); what each prints last, as JSON."""
    procs = []
    for kind, work, args in jobs:
        code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'bench')!r}); import index_scale as b; "
                f"print(json.dumps(b._memory_job({kind!r}, b.Path({str(work)!r}), {args.max_memory!r}, {args.k})))")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True))
    out = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=4 * 3600)
        if proc.returncode != 0:
            sys.exit(f"a memory-section child failed (exit {proc.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _memory_job(kind: str, work: Path, max_memory: str, k: int) -> dict:
    """In a child process: ``exact`` (brute force over the shards, a flat index per shard, the top k merged
    by faiss.ResultHeap), ``bounded`` (xmcore's memory-bounded on-disk build) or ``in_memory`` (every vector
    loaded, then the same IVF-PQ trained and filled in memory, as a plain ``xmcore index --index ivfpq``)."""
    import resource

    import faiss

    from xmcore.search import ivf

    files, counts = _shard_list(work)
    started = time.perf_counter()
    result: dict = {}
    if kind == "exact" and (work / "exact.json").is_file():
        return json.loads((work / "exact.json").read_text())
    if kind == "exact":
        queries = np.load(work / "queries.npy")
        heap, searching = faiss.ResultHeap(len(queries), k, keep_max=True), 0.0
        for file, offset in zip(files, np.cumsum([0, *counts[:-1]]), strict=True):
            index = faiss.IndexFlatIP(queries.shape[1])
            index.add(np.load(file))
            t = time.perf_counter()
            scores, ids = index.search(queries, k)
            heap.add_result(scores, ids + int(offset))
            searching += time.perf_counter() - t
        heap.finalize()
        np.save(work / "truth.npy", heap.I)
        result = {"qps": len(queries) / searching, "search_s": searching}
        (work / "exact.json").write_text(json.dumps(result))
    else:
        if kind == "bounded":
            plan = ivf.plan_ivf(int(sum(counts)), int(np.load(files[0], mmap_mode="r").shape[1]),
                                ivf.parse_memory(max_memory), on_disk=True)
            parts = ivf.build_parts(files, counts, work / "bounded", "faiss/vectors", 1, plan=plan, on_disk=True)
            result = {"why": plan.why, "entry": {"shards": parts, "on_disk": True}, "nprobe": plan.nprobe,
                      "bytes": sum((work / "bounded" / n).stat().st_size for p in parts for n in (p["file"], p["ivfdata"]))}
        else:  # the bounded build's trained quantizer and PQ, empty lists in memory: the adding compared alone
            index = faiss.read_index(str(work / "bounded" / "faiss" / "vectors.index"), faiss.IO_FLAG_SKIP_IVF_DATA)
            ivf_index = faiss.extract_index_ivf(index)
            lists = faiss.ArrayInvertedLists(ivf_index.nlist, ivf_index.code_size)
            ivf_index.replace_invlists(lists, True)
            lists.this.disown()  # the index owns them now
            ivf_index.ntotal = index.ntotal = 0
            started = time.perf_counter()
            vectors = np.concatenate([np.load(f) for f in files])
            index.add(vectors)
            result = {"ntotal": int(index.ntotal)}
    result.update(seconds=time.perf_counter() - started,
                  peak_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return result


def _search_rows(folder: Path, bounded: dict, queries: np.ndarray, truth: np.ndarray, exact_qps: float,
                 threads: int) -> list[tuple]:
    """recall@k and QPS of the on-disk index (its lists memory-mapped) at nprobe / 2, nprobe and 2 nprobe."""
    import faiss

    from xmcore.search import ivf

    faiss.omp_set_num_threads(threads)
    rows = []
    for nprobe in (max(1, bounded["nprobe"] // 2), bounded["nprobe"], 2 * bounded["nprobe"]):
        def configure(index, nprobe=nprobe):
            faiss.extract_index_ivf(index).nprobe = nprobe
            ivf.set_quantizer_search(index, nprobe)

        index = ivf.open_index(folder, bounded["entry"], configure)
        index.search(queries, truth.shape[1])  # the lists' pages into the page cache, as a serving process has them
        best, ids = float("inf"), None
        for _ in range(3):
            t = time.perf_counter()
            _, ids = index.search(queries, truth.shape[1])
            best = min(best, time.perf_counter() - t)
        recall = float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(ids, truth, strict=True)]))
        rows.append((nprobe, recall, len(queries) / best, len(queries) / best / exact_qps))
    return rows


def _print_memory(args, budget: int, exact: dict, bounded: dict, in_memory: dict, rows: list[tuple]) -> bool:
    print(f"load average {load_average()}; {args.threads} thread(s) a process")
    print("| build | peak RSS | wall s | index on disk |")
    print("|---|---:|---:|---:|")
    print(f"| memory-bounded, lists on disk (xmcore) | {bounded['peak_bytes'] / 1e9:.2f} GB | {bounded['seconds']:.0f} | "
          f"{bounded['bytes'] / 1e9:.2f} GB ({bounded['bytes'] / args.vectors:.0f} B a vector) |")
    print(f"| in memory (shards loaded and concatenated, as without --max-memory; training not repeated) | {in_memory['peak_bytes'] / 1e9:.2f} GB | "
          f"{in_memory['seconds']:.0f} | - |")
    print(f"exact search (a flat index per shard, faiss.ResultHeap): {exact['qps']:.1f} queries/s")
    print("| nprobe | recall@10 | queries/s | x exact |")
    print("|---:|---:|---:|---:|")
    for nprobe, recall, qps, speedup in rows:
        print(f"| {nprobe}{' (chosen)' if nprobe == bounded['nprobe'] else ''} | {recall:.3f} | {qps:,.0f} | {speedup:.0f}x |")
    chosen = next(r for r in rows if r[0] == bounded["nprobe"])
    bars = {f"peak RSS {bounded['peak_bytes'] / 1e9:.2f} GB <= {budget / 1e9:.2f} GB": bounded["peak_bytes"] <= budget,
            f"recall@10 {chosen[1]:.3f} >= 0.90": chosen[1] >= 0.90,
            f"{chosen[3]:.0f}x exact's QPS >= 20x": chosen[3] >= 20}
    for bar, ok in bars.items():
        print(f"{'PASS' if ok else 'FAIL'}: {bar}")
    return all(bars.values())


def section_join(args, work: Path) -> bool:
    """Rank 0's join of the metadata parts of a build on several processes (--rows lines, ~170 B each, in
    parts of --rows-per-shard), each way in a fresh process: its peak RSS, wall time and the file's SHA-256."""
    line = '{{"id": "image-{0}", "modality": "image", "split": "train", "path": "/shared/laion/{1:05d}/{0:09d}.jpg", ' \
           '"media_type": "image/jpeg", "label": {2}}}\n'
    (work / "building").mkdir()
    for k, lo in enumerate(range(0, args.rows, args.rows_per_shard)):
        rows = range(lo, min(lo + args.rows_per_shard, args.rows))
        (work / "building" / f"image-{k:05d}.jsonl").write_text("".join(line.format(i, i // 10_000, i % 1000) for i in rows))
    rows = []
    for kind in ("imports only", "whole", "streamed"):
        code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'bench')!r}); import index_scale as b; "
                f"print(json.dumps(b._join_job({kind!r}, b.Path({str(work)!r}))))")
        proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True)
        rows.append((kind, json.loads(proc.stdout.strip().splitlines()[-1])))
    size = sum(p.stat().st_size for p in (work / "building").glob("*.jsonl"))
    print(f"load average {load_average()}; {args.rows:,} rows, {size / 1e6:.0f} MB in {len(list((work / 'building').glob('*')))} parts")
    print("| join | peak RSS | wall s |\n|---|---:|---:|")
    for kind, row in rows:
        print(f"| {kind} | {row['peak_bytes'] / 1e6:,.0f} MB | {row['seconds']:.1f} |")
    same = rows[1][1]["sha256"] == rows[2][1]["sha256"]
    print(f"{'PASS' if same else 'FAIL'}: the same file both ways")
    return same


def _join_job(kind: str, work: Path) -> dict:
    """In a child process: ``whole`` (each part read into memory, joined, written and hashed again, as rank 0
    did before) or ``streamed`` (xmcore's write_metadata: the parts copied in blocks, hashed on the way)."""
    import resource

    from xmcore.io import atomic_write_text, file_sha256
    from xmcore.search.faiss_index import IndexOptions
    from xmcore.search.folder import Build
    from xmcore.search.gallery import write_metadata

    parts, out = sorted((work / "building").glob("*.jsonl")), work / "metadata" / "image.jsonl"
    started, digest = time.perf_counter(), None
    if kind == "whole":
        atomic_write_text(out, "".join([p.read_text() for p in parts]))
        digest = file_sha256(out)
    elif kind == "streamed":
        build = Build(work, None, IndexOptions(), {}, "")
        digest = build.checksums[write_metadata(build, "image", parts, set())[0]]
    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "sha256": digest,
            "seconds": time.perf_counter() - started}


SECTIONS = {"embedding": section_embedding, "memory": section_memory, "join": section_join}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", default="all", choices=[*SECTIONS, "all"], help="the section to run (default: all)")
    parser.add_argument("--run", help="embedding: a trained quickstart run directory (default: train one here)")
    parser.add_argument("--images", type=int, default=1000, help="embedding: gallery pictures, 5 captions each (default 1000)")
    parser.add_argument("--shard-size", type=int, default=500, help="embedding: rows per shard (default 500)")
    parser.add_argument("--repeat", type=int, default=2, help="embedding: runs of each setting, the best kept (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="embedding: threads in all, shared out among the processes (default: the cores)")
    parser.add_argument("--vectors", type=int, default=5_000_000, help="memory: synthetic vectors (default 5,000,000)")
    parser.add_argument("--dim", type=int, default=256, help="memory: their dimension (default 256)")
    parser.add_argument("--rows-per-shard", type=int, default=50_000, help="memory: rows per embeddings shard (default 50000)")
    parser.add_argument("--max-memory", default="2GB", help="memory: the build's budget (default 2GB)")
    parser.add_argument("--queries", type=int, default=300, help="memory: queries against exact search (default 300)")
    parser.add_argument("-k", type=int, default=10, help="memory: recall@k (default 10)")
    parser.add_argument("--rows", type=int, default=2_000_000, help="join: metadata rows (default 2,000,000)")
    parser.add_argument("--work", help="memory: a folder that keeps the shards, queries and exact answers (a rerun reuses them)")
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
