"""`xmcore serve` under load: a closed set of clients on loopback, batched queries against one at a time.

    python bench/serve_load.py                                    # a quickstart index built once into --work
    python bench/serve_load.py --index INDEX_DIR                  # 32 clients, 60 s per server setting
    python bench/serve_load.py --index INDEX_DIR --gallery 100000 --kind hnsw
    python bench/serve_load.py --index INDEX_DIR --clients 8 --seconds 10 --waits 0,2

For each ``--batch-wait-ms`` setting in ``--waits`` (0: one query at a time through the model, as before
batching; N: concurrent queries collected for up to N ms and embedded and searched as one batch) the
script starts `xmcore serve` in a subprocess on a free port of 127.0.0.1 (all settings' servers at once);
then ``--clients`` asyncio tasks (one keep-alive connection each) send text queries (GET /search, k=10,
captions drawn from the gallery's metadata) back to back for ``--seconds`` seconds per setting, and stop
by themselves.  The clients write prepared request bytes and read each answer whole through asyncio
streams, as a load generator such as wrk does (``--client raw``, about 0.06 ms of CPU a request);
``--client httpx`` uses httpx.AsyncClient instead (about 0.5 ms: on 2 cores it, not the server, caps
batched throughput near 1,700 requests/s).  The seconds are split into ``--rounds`` in which the settings take turns, so that the
load of other processes on a shared machine falls on each alike.  It prints requests/s, p50/p99
latency, errors (any status but 200, any failed connection), the server's resident memory (RSS, from
/proc) before and after, and the CPU time per request of the server and of the client (the client
runs on the same machine: on a small one it takes a share of the cores), one row per setting.

Without ``--index`` the script builds one, once, into ``--work``: the quickstart recipe trained briefly
(one epoch of a few batches: the quickstart's model, untrained weights matter little to the server's speed)
by `xmcore run`, then `xmcore index` of its test split (200 pictures, 1,000 captions), each written into a
temporary folder and renamed when complete, so a later run reuses them and an interrupted one leaves nothing
half-built.

``--gallery N`` serves a synthetic gallery of N pictures instead (written once into ``--work``): the
index folder is copied with its model, and its image modality is replaced by the real embeddings of its
pictures plus N - count vectors near them (each a real embedding plus Gaussian noise, re-normalised: the
clusters trained embeddings form), indexed with the index's own FAISS construction
(``xmcore.search.new_faiss_index``, ``--kind``), with metadata rows (ids ``image-<row>``, no file to show)
and checksums in its manifest, so `xmcore serve` opens it as any index.  Text queries embed as
before; only the search is over N vectors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xmcore.io import file_sha256, write_json  # noqa: E402
from xmcore.search import IndexOptions, new_faiss_index  # noqa: E402
from xmcore.search.faiss_index import write_faiss  # noqa: E402
from xmcore.testing import free_port, offline_env  # noqa: E402


def synthetic_gallery(source: Path, out: Path, items: int, kind: str, seed: int = 0, noise: float = 0.35) -> Path:
    """``source`` with its image modality grown to ``items`` vectors (see the module docstring); once."""
    if (out / "manifest.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    manifest = json.loads((tmp / "manifest.json").read_text())
    entry = manifest["modalities"]["image"]
    real = np.concatenate([np.load(tmp / s["file"]) for s in entry["shards"]]).astype(np.float32)
    rng = np.random.default_rng(seed)
    near = real[rng.integers(0, len(real), items - len(real))]
    near = near + rng.normal(0, noise / np.sqrt(real.shape[1]), near.shape).astype(np.float32)
    vectors = np.concatenate([real, near / np.linalg.norm(near, axis=1, keepdims=True)]).astype(np.float32)
    for s in entry["shards"]:
        (tmp / s["file"]).unlink()
        manifest["checksums"].pop(s["file"])
    np.save(tmp / "embeddings/image-00000.npy", vectors)
    options = IndexOptions(kind=kind)
    started = time.perf_counter()
    index = new_faiss_index(vectors.shape[1], options, vectors)
    index.add(vectors)
    write_faiss(tmp / entry["index"]["file"], index)
    print(f"synthetic gallery: {items:,} vectors, {kind} built in {time.perf_counter() - started:.0f} s", flush=True)
    metadata = tmp / entry["metadata"]
    kept = metadata.read_text().splitlines()
    lines = kept + [json.dumps({"id": f"image-{row}", "modality": "image", "split": "synthetic"})
                    for row in range(len(kept), items)]
    metadata.write_text("\n".join(lines) + "\n")
    entry.update(count=items, shards=[{"file": "embeddings/image-00000.npy", "rows": items}],
                 index={**entry["index"], "type": kind, "params": options.params(), "ntotal": items})
    for name in ("embeddings/image-00000.npy", entry["index"]["file"], entry["metadata"]):
        manifest["checksums"][name] = file_sha256(tmp / name)
    write_json(tmp / "manifest.json", manifest)
    tmp.replace(out)
    return out


QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
BRIEF = ["trainer.max_epochs=1", "trainer.limit_train_batches=5", "trainer.limit_val_batches=1",
         "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "eval.report=false"]


def _xmcore(*args: object) -> None:
    result = subprocess.run([sys.executable, "-m", "xmcore", *map(str, args)], env=offline_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"xmcore {args[0]} failed (exit {result.returncode}): {result.stderr[-2000:]}")


def _built_once(out: Path, build) -> Path:
    """``out`` as it is when it exists; otherwise made by ``build(tmp)`` into a temporary sibling folder that is
    renamed to ``out`` once complete (an interrupted build leaves no ``out`` behind)."""
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def quickstart_index(work: Path) -> Path:
    """An index to serve when none is given: the quickstart trained briefly, its test split indexed (once)."""
    run = work / "quickstart-run"
    if not run.is_dir():
        print(f"training the quickstart briefly into {run} (once) ...", flush=True)
    _built_once(run, lambda tmp: _xmcore("run", QUICKSTART, "--out", tmp, *BRIEF))
    index = work / "quickstart-index"
    if not index.is_dir():
        print(f"xmcore index {run} --split test -> {index} (once) ...", flush=True)
    return _built_once(index, lambda tmp: _xmcore("index", run, "--out", tmp, "--split", "test"))


def rss_mb(pid: int) -> float:
    """The process's resident memory in MB (Linux: /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(index: Path, wait_ms: float, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "xmcore", "serve", str(index), "--port", str(port),
                             "--batch-wait-ms", str(wait_ms), *extra],
                            env=offline_env({"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"xmcore serve did not start: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("xmcore serve did not answer /health within 300 s")


async def client(url: str, queries: list[str], seed: int, until: float, latencies: list[float], errors: list[str]):
    """One client of httpx's (an AsyncClient with one connection): easy to trust, but about 0.5 ms of CPU a request."""
    import httpx

    rng = np.random.default_rng(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=1)) as http:
        while time.perf_counter() < until:
            text = queries[rng.integers(len(queries))]
            started = time.perf_counter()
            try:
                response = await http.get("/search", params={"text": text, "k": 10})
                if response.status_code != 200 or not response.json()["results"]:
                    errors.append(f"{response.status_code}: {response.text[:100]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - started)


def requests_for(url: str, queries: list[str]) -> list[bytes]:
    """Each query's HTTP/1.1 request, written once (the raw client sends them as they are)."""
    host = urllib.parse.urlsplit(url).netloc
    return [(f"GET /search?{urllib.parse.urlencode({'text': q, 'k': 10})} HTTP/1.1\r\nHost: {host}\r\n"
             "Accept: application/json\r\n\r\n").encode() for q in queries]


async def raw_client(url: str, requests: list[bytes], seed: int, until: float, latencies: list[float],
                     errors: list[str]):
    """One client on one keep-alive connection through asyncio streams, as a load generator such as wrk
    does: the request bytes made beforehand; each answer read whole (status line, headers, a body of
    Content-Length bytes) and checked (status 200, JSON with results).  About a fifth of httpx's CPU a
    request, which on a machine whose cores the client shares is left to the server."""
    parts = urllib.parse.urlsplit(url)
    rng = np.random.default_rng(seed)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while time.perf_counter() < until:
            request = requests[rng.integers(len(requests))]
            started = time.perf_counter()
            try:
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                status = int(head[9:12])
                length = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head).group(1))
                body = await reader.readexactly(length)
                if status != 200 or not json.loads(body)["results"]:
                    errors.append(f"{status}: {body[:100]!r}")
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, AttributeError, ValueError) as exc:
                errors.append(repr(exc))
                writer.close()
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def load(url: str, queries: list[str], clients: int, seconds: float, kind: str = "raw") -> dict:
    latencies, errors = [], []
    if kind == "raw":
        one, queries = raw_client, requests_for(url, queries)
    else:
        one = client
    warm_until, warm = time.perf_counter() + 2, []  # each connection opened, the model's first calls made
    await asyncio.gather(*(one(url, queries, i, warm_until, warm, []) for i in range(clients)))
    started = time.perf_counter()
    await asyncio.gather(*(one(url, queries, i, started + seconds, latencies, errors) for i in range(clients)))
    return {"requests": len(latencies), "warm": len(warm), "seconds": time.perf_counter() - started,
            "ms": [x * 1000 for x in latencies], "errors": len(errors), "first_error": errors[0] if errors else ""}


def captions(index: Path, limit: int = 2000) -> list[str]:
    rows = [json.loads(line) for line in (index / "metadata" / "text.jsonl").read_text().splitlines() if line.strip()]
    return [r["caption"] for r in rows[:limit]] or ["a red circle"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="an index folder (xmcore index) with text captions (default: the "
                        "quickstart's, built once into --work)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--waits", default="0,2", help="--batch-wait-ms settings to compare (default 0,2)")
    parser.add_argument("--rounds", type=int, default=3, help="the seconds of each setting in this many rounds, "
                        "the settings taking turns (default 3)")
    parser.add_argument("--gallery", type=int, default=0, help="serve a synthetic gallery of this many pictures")
    parser.add_argument("--kind", default="hnsw", help="the synthetic gallery's FAISS index (default hnsw)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/xmcore-serve-load"),
                        help="where the default index and synthetic galleries are written (default /tmp/xmcore-serve-load)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="raw: keep-alive connections through asyncio streams (little CPU, as wrk); httpx: "
                             "httpx.AsyncClient (about five times the client CPU a request; on a machine of few cores "
                             "the client then caps what is measured)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    source = args.index or quickstart_index(args.work)
    index = source
    if args.gallery:
        made_from = file_sha256(source / "manifest.json")[:12]  # a gallery grown from another index is another folder
        index = synthetic_gallery(source, args.work / f"gallery-{args.gallery}-{args.kind}-{made_from}", args.gallery,
                                  args.kind)
    queries = captions(source)
    print(f"{index}: {args.clients} {args.client} clients x {args.seconds:g} s of GET /search (k=10); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    print("| --batch-wait-ms | requests | requests/s | p50 ms | p99 ms | errors | server RSS before -> after (MB) "
          "| CPU ms per request: server, client |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    waits = [float(w) for w in args.waits.split(",")]
    servers = [start_server(index, wait, []) for wait in waits]  # all up at once: the rounds alternate between them
    try:
        rows = [{"wait_ms": wait, "rss_before": rss_mb(proc.pid), "requests": 0, "warm": 0, "seconds": 0.0, "ms": [],
                 "errors": 0, "first_error": "", "server_cpu": 0.0, "client_cpu": 0.0} for wait, (proc, _) in zip(waits, servers)]
        for _ in range(args.rounds):  # the load of other processes on the machine falls on every setting alike
            for row, (proc, url) in zip(rows, servers):
                cpu = cpu_seconds(proc.pid), time.process_time()
                part = asyncio.run(load(url, queries, args.clients, args.seconds / args.rounds, args.client))
                row["server_cpu"] += cpu_seconds(proc.pid) - cpu[0]
                row["client_cpu"] += time.process_time() - cpu[1]
                for key in ("requests", "warm", "seconds", "ms", "errors"):
                    row[key] += part[key]
                row["first_error"] = row["first_error"] or part["first_error"]
        for row, (proc, _) in zip(rows, servers):
            row["rss_after"] = rss_mb(proc.pid)
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(timeout=30)
    for row in rows:
        ms, handled = np.array(row.pop("ms")), max(row["requests"] + row["warm"], 1)
        row.update(rps=row["requests"] / row["seconds"], p50=float(np.percentile(ms, 50)), p99=float(np.percentile(ms, 99)),
                   server_cpu_ms=row["server_cpu"] * 1000 / handled, client_cpu_ms=row["client_cpu"] * 1000 / handled)
        print(f"| {row['wait_ms']:g} | {row['requests']:,} | {row['rps']:.1f} | {row['p50']:.0f} | {row['p99']:.0f} | "
              f"{row['errors']} | {row['rss_before']:.0f} -> {row['rss_after']:.0f} | {row['server_cpu_ms']:.2f}, "
              f"{row['client_cpu_ms']:.2f} |", flush=True)
        if row["errors"]:
            print(f"  first error: {row['first_error']}")
    if len(rows) > 1 and rows[0]["rps"]:
        print(f"ratio: {rows[-1]['rps'] / rows[0]['rps']:.2f}x requests/s (batched / one at a time), "
              f"p99 {rows[-1]['p99']:.0f} ms vs {rows[0]['p99']:.0f} ms; load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
