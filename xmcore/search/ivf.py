"""IVF-PQ built from embedding shards in bounded memory, inverted lists on disk, and indexes in shards.

What clip-retrieval does with autofaiss (criteo/autofaiss, ``external/optimize.py``), with FAISS itself:

- **Parameters from a memory budget** (:func:`plan_ivf`): the number of coarse cells from the gallery's
  size (4 sqrt(N) rounded to a power of 2, as autofaiss and FAISS's guidelines do), the largest PQ code
  whose codes and ids (``m + 8`` bytes a vector) fit the budget, a training sample of 40 vectors a cell
  (FAISS warns below 39; autofaiss takes up to 100) bounded by what is left, and an HNSW coarse quantizer from 1,000 cells on
  (autofaiss's ``IVFn_HNSW32``): assigning millions of vectors to thousands of cells exactly is the slow
  part of a build.  Below ``FLAT_BELOW`` vectors, where the flat index fits the budget, the plan is an exact
  flat index instead (autofaiss does the same under 10,000): PQ's k-means has too few vectors a cell, and
  exact search over so few is fast.
- **Training on a sample, adding shard by shard** (:func:`build_parts`): the embedding shards are read
  a chunk at a time; no step holds every vector.
- **Inverted lists on disk** (``on_disk``): vectors are added to per-chunk indexes written to disk, then
  merged by ``faiss.contrib.ondisk.merge_ondisk`` into FAISS's ``OnDiskInvertedLists`` (an ``.ivfdata``
  file beside the ``.index``); a search maps them (``IO_FLAG_ONDISK_SAME_DIR``: the folder may move).
- **Shards** (``parts > 1``): a modality's rows split into contiguous ranges, one FAISS file each (IVF
  parts share one trained quantizer), searched together by FAISS's ``IndexShards`` (:func:`open_index`).

Everything here takes plain paths and numbers; the index folder's manifest says how to call it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from xmcore.errors import XmcoreError

CHUNK_ROWS = 65_536  # vectors read, assigned and encoded at a time
RESERVE = 200 * 10**6  # what the interpreter, numpy and FAISS take before any vector
PQ_SIZES = (256, 128, 64, 48, 32, 24, 16, 8, 4)  # bytes a code, largest first (autofaiss's list; below d)
TRAIN_PER_CELL = 40  # FAISS warns below 39; k-means, the longest step of a build, costs nlist^2 x this
HNSW_FROM = 1000  # cells: from here on the coarse quantizer is an HNSW graph (as autofaiss)
FLAT_BELOW = 10_000  # vectors: a smaller gallery gets an exact flat index when it fits (autofaiss's threshold)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str, flag: str = "--max-memory") -> int:
    """``"2GB"``, ``"500MB"``, ``"1.5GiB"`` or a number of bytes, as bytes (GB = 10^9, GiB = 2^30)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise XmcoreError(f"{flag}: '{text}' is not a size; expected a number and a unit, e.g. 2GB, 500MB or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def human(n: float) -> str:
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.{1 if n < 100 * size else 0}f} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class IvfPlan:
    """IVF-PQ parameters for a gallery and a memory budget, and the reasons, in two lines; or, ``kind``
    ``"flat"``, an exact flat index (a small gallery: the IVF-PQ fields are 0 and unused)."""

    nlist: int
    pq_m: int
    nbits: int
    nprobe: int
    train_size: int
    quantizer: str  # "flat" or "hnsw32"
    chunk_rows: int  # rows held by one on-disk sub-index before it is written
    why: str
    kind: str = "ivfpq"  # or "flat"

    def params(self) -> dict[str, int]:
        """As ``IndexOptions`` names them (kind ``ivfpq``, no exact re-ranking: that needs every vector)."""
        if self.kind == "flat":
            return {}
        return {"nlist": self.nlist, "pq_m": self.pq_m, "nbits": self.nbits, "nprobe": self.nprobe, "refine": 0}


def quantizer_bytes(nlist: int, dim: int, quantizer: str) -> int:
    return nlist * (4 * dim + (2 * 32 * 4 + 64 if quantizer != "flat" else 0))  # centroids (+ HNSW links)


def build_peak(count: int, dim: int, nlist: int, pq_m: int, train_size: int, quantizer: str, on_disk: bool,
               chunk_rows: int) -> dict[str, int]:
    """The estimated peak of each phase (bytes): training (the sample, its residuals, k-means' buffers),
    adding (a chunk and its residuals, plus the codes and ids held: all of them, or one sub-index's on disk)
    and, on disk, merging: the per-chunk indexes and the .ivfdata are memory-mapped, and the pages they touch
    count in the resident size (the kernel may drop them, but ru_maxrss sees them: measured at 5M)."""
    fixed = RESERVE + quantizer_bytes(nlist, dim, quantizer)
    held = (min(count, chunk_rows) if on_disk else count) * (pq_m + 8)
    phases = {"train": fixed + 3 * train_size * dim * 4, "add": fixed + 3 * CHUNK_ROWS * dim * 4 + held}
    return phases | ({"merge": fixed + 2 * count * (pq_m + 8)} if on_disk else {})


def plan_ivf(count: int, dim: int, budget: int, on_disk: bool = False) -> IvfPlan:
    """autofaiss's choices for ``count`` vectors of ``dim`` under ``budget`` bytes, for building and for the
    index a search holds (codes and ids; on disk they are mapped, and the budget is the page cache that
    keeps them fast).  Raises a clear error when no PQ code fits."""
    if count < 1:
        raise XmcoreError("--max-memory: the gallery is empty; there is nothing to plan an index for")
    flat = flat_plan(count, dim, budget, on_disk)
    if flat is not None:
        return flat
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(count))))
    nlist = max(1, min(nlist, 2 ** int(math.log2(max(1, count // 39)))))  # >= 39 training vectors a cell
    nbits = 8 if count >= 39 * 256 else max(1, int(math.log2(max(2, count // 39))))
    quantizer = "hnsw32" if nlist >= HNSW_FROM else "flat"
    fixed = RESERVE + quantizer_bytes(nlist, dim, quantizer)
    per_cell = max(nlist, 2**nbits)
    points = int(min(TRAIN_PER_CELL, (budget - fixed) / (3 * 4 * dim * per_cell))) if budget > fixed else 0
    train_size = min(count, max(points, 39) * per_cell)
    sizes = [m for m in PQ_SIZES if dim % m == 0 and m < dim] or [1]

    def sub_rows(m: int) -> int:  # on disk: a sub-index's codes take at most a quarter of what is left
        return min(count, max(CHUNK_ROWS, (budget - fixed) // 4 // (m + 8))) if on_disk else count

    def peak(m: int, train: int = train_size) -> int:
        return max(build_peak(count, dim, nlist, m, train, quantizer, on_disk, sub_rows(m)).values())

    fits = [m for m in sizes if count * (m + 8) + fixed <= budget and peak(m) <= budget]
    if points < 39 or not fits:
        smallest = sizes[-1]
        need = max(count * (smallest + 8) + fixed, peak(smallest, min(count, 39 * per_cell)))
        raise XmcoreError(
            f"--max-memory {human(budget)} is too small for {count:,} vectors of d={dim}: even PQ{smallest} "
            f"({smallest + 8} B a vector with its id, {nlist} cells, a sample of 39 vectors a cell) needs about "
            f"{human(need)}; give at least that, or index fewer items per folder (--split)")
    pq_m = fits[0]
    nprobe = min(nlist, max(8, nlist // 256))  # about 0.4% of the gallery, at least 8 cells
    bigger = [m for m in sizes if m > pq_m]
    why = (f"--max-memory {human(budget)}: {count:,} vectors of d={dim} -> IVF{nlist} (4*sqrt(N) = "
           f"{4 * math.sqrt(count):,.0f}, to a power of 2; {quantizer} quantizer), PQ{pq_m}x{nbits} "
           f"({pq_m + 8} B a vector with its id: {human(count * (pq_m + 8))}"
           + (f"; PQ{bigger[-1]} would not fit)" if bigger else ")")
           + f",\n  trained on {train_size:,} vectors ({train_size // per_cell} a cell), nprobe {nprobe}; estimated "
           f"build peak {human(peak(pq_m))}"
           + (", inverted lists on disk" if on_disk else ""))
    return IvfPlan(nlist, pq_m, nbits, nprobe, train_size, quantizer, sub_rows(pq_m), why)


def flat_plan(count: int, dim: int, budget: int, on_disk: bool) -> IvfPlan | None:
    """An exact flat index for a gallery below ``FLAT_BELOW`` vectors whose vectors (held once, plus a chunk
    being added) fit ``budget``; else ``None``.  It is one plain file: ``on_disk`` maps IVF lists only."""
    held = count * dim * 4
    peak = RESERVE + held + min(count, CHUNK_ROWS) * dim * 4
    if count >= FLAT_BELOW or peak > budget:
        return None
    why = (f"--max-memory {human(budget)}: {count:,} vectors of d={dim} -> a flat (exact) index ({human(held)}): "
           f"below {FLAT_BELOW:,} vectors IVF-PQ has too few to train on and exact search is fast; estimated build "
           f"peak {human(peak)}"
           + (",\n  a plain file read whole when searched: --on-disk maps IVF-PQ's lists only" if on_disk else ""))
    return IvfPlan(0, 0, 0, 0, 0, "", count, why, kind="flat")


# ---------------------------------------------------------------------------------------------- reading shards


@dataclass(frozen=True)
class Slice:
    """Rows ``[lo, hi)`` of one embedding shard file."""

    file: Path
    lo: int
    hi: int


def row_slices(files: Sequence[Path], counts: Sequence[int], start: int, stop: int) -> list[Slice]:
    """The pieces of the shard files that hold the modality's rows ``[start, stop)``."""
    out, offset = [], 0
    for file, n in zip(files, counts, strict=True):
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            out.append(Slice(Path(file), lo - offset, hi - offset))
        offset += n
    return out


def iter_chunks(slices: Sequence[Slice], rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """The rows of ``slices`` in order, ``rows`` at a time, as float32 copies (the shard stays mapped only
    while it is read, so its pages leave the process with it)."""
    for piece in slices:
        array = np.load(piece.file, mmap_mode="r")
        for lo in range(piece.lo, piece.hi, rows):
            yield np.ascontiguousarray(array[lo:min(lo + rows, piece.hi)], dtype=np.float32)
        del array


def sample_rows(files: Sequence[Path], counts: Sequence[int], size: int, seed: int = 0) -> np.ndarray:
    """``size`` rows drawn without replacement from all shards (every row when there are no more)."""
    total = int(sum(counts))
    chosen = np.arange(total) if size >= total else np.sort(np.random.default_rng(seed).choice(total, size, replace=False))
    parts, offset = [], 0
    for file, n in zip(files, counts, strict=True):
        mine = chosen[(chosen >= offset) & (chosen < offset + n)] - offset
        if len(mine):
            array = np.load(file, mmap_mode="r")
            parts.append(np.asarray(array[mine], dtype=np.float32))
            del array
        offset += n
    return np.ascontiguousarray(np.concatenate(parts))


# ---------------------------------------------------------------------------------------------- building


def _faiss():
    import faiss

    return faiss


@contextlib.contextmanager
def _faiss_silenced():
    """FAISS's on-disk lists print to C's stdout as they resize and move ("resizing ...", "updating ondisk
    filename ..."); that would land in ``xmcore search --json``'s output, so fd 1 points at /dev/null meanwhile."""
    import ctypes

    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                libc.fflush(None)
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def trained_ivfpq(dim: int, nlist: int, pq_m: int, nbits: int, quantizer: str, sample: np.ndarray):
    """An empty IVF-PQ index (inner product) trained on ``sample``; k-means runs exactly even where the
    quantizer is an HNSW graph (FAISS's ``clustering_index``)."""
    faiss = _faiss()
    ip = faiss.METRIC_INNER_PRODUCT
    if dim % pq_m:
        raise XmcoreError(f"--pq-m {pq_m} must divide the embedding dimension {dim}")
    coarse = faiss.IndexHNSWFlat(dim, 32, ip) if quantizer != "flat" else faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(coarse, dim, nlist, pq_m, nbits, ip)
    if quantizer != "flat":
        clustering = faiss.IndexFlatIP(dim)
        index.clustering_index = clustering
        index.referenced_objects = [coarse, clustering]  # the SWIG pointers do not keep them alive
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.clustering_index = None
    return index


def _add_chunks(index, slices: Sequence[Slice], first_id: int, on_add: Callable[[int], None] | None) -> int:
    next_id = first_id
    for chunk in iter_chunks(slices):
        index.add_with_ids(chunk, np.arange(next_id, next_id + len(chunk), dtype=np.int64))
        next_id += len(chunk)
        if on_add:
            on_add(len(chunk))
    return next_id


def build_ivf_part(trained: np.ndarray, slices: Sequence[Slice], out_file: Path, on_disk: bool, chunk_rows: int,
                   on_add: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One FAISS file (``out_file``) of the rows in ``slices``, ids counted from 0, from the serialized trained
    index ``trained``.  ``on_disk``: per-chunk indexes merged into ``<out_file stem>.ivfdata`` beside it.
    Both files appear whole or not at all (built in a temporary folder, then moved)."""
    faiss = _faiss()
    out_file = Path(out_file)
    tmp = out_file.parent / f".{out_file.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        ivfdata = out_file.with_suffix(".ivfdata")
        if not on_disk:
            index = faiss.deserialize_index(trained)
            _add_chunks(index, slices, 0, on_add)
            faiss.write_index(index, str(tmp / out_file.name))
        else:
            subfiles, row = [], 0
            for group in _groups(slices, chunk_rows):
                sub = faiss.deserialize_index(trained)
                row = _add_chunks(sub, group, row, on_add)
                subfiles.append(str(tmp / f"sub-{len(subfiles):05d}.index"))
                faiss.write_index(sub, subfiles[-1])
                del sub
            from faiss.contrib.ondisk import merge_ondisk

            index = faiss.deserialize_index(trained)
            with _faiss_silenced():
                merge_ondisk(index, subfiles, str(tmp / ivfdata.name))
            faiss.write_index(index, str(tmp / out_file.name))
            for name in subfiles:
                os.unlink(name)
            os.replace(tmp / ivfdata.name, ivfdata)
        ntotal = int(index.ntotal)
        del index
        os.replace(tmp / out_file.name, out_file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"ntotal": ntotal, **({"ivfdata": ivfdata.name} if on_disk else {})}


def _groups(slices: Sequence[Slice], rows: int) -> Iterator[list[Slice]]:
    """``slices`` cut into consecutive groups of at most ``rows`` rows (one on-disk sub-index each)."""
    group, held = [], 0
    for piece in slices:
        lo = piece.lo
        while lo < piece.hi:
            take = min(piece.hi - lo, rows - held)
            group.append(Slice(piece.file, lo, lo + take))
            held, lo = held + take, lo + take
            if held == rows:
                yield group
                group, held = [], 0
    if group:
        yield group


def part_ranges(count: int, parts: int) -> list[tuple[int, int]]:
    """``count`` rows cut into ``parts`` contiguous ranges of near-equal size."""
    if parts < 1:
        raise XmcoreError(f"--shards: expected 1 or more, got {parts}")
    if parts > count:
        raise XmcoreError(f"--shards {parts}: more shards than the {count} items of the gallery; use at most {count}")
    bounds = np.linspace(0, count, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def build_parts(files: Sequence[Path], counts: Sequence[int], index_dir: Path, stem: str, parts: int = 1,
                new_index: Callable[[], Any] | None = None, plan: IvfPlan | None = None, on_disk: bool = False,
                seed: int = 0, on_add: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """The FAISS files of one modality, ``<stem>.index`` (``<stem>-s00.index``, ... for ``parts > 1``; ``stem``
    relative to ``index_dir``, e.g. ``faiss/image``): IVF-PQ per ``plan`` (trained once on a sample, added a
    chunk at a time, on disk if asked), or what ``new_index()`` makes (flat, HNSW: a part's rows in memory).
    Returns the manifest's ``shards``: per file its path, first row and count (and its ``ivfdata``)."""
    index_dir = Path(index_dir)
    (index_dir / stem).parent.mkdir(parents=True, exist_ok=True)
    ranges = part_ranges(int(sum(counts)), parts)
    names = [f"{stem}.index"] if parts == 1 else [f"{stem}-s{k:02d}.index" for k in range(parts)]
    trained = _trained(files, counts, plan, seed) if plan is not None else None
    out = []
    for name, (lo, hi) in zip(names, ranges, strict=True):
        slices = row_slices(files, counts, lo, hi)
        if trained is not None:
            entry = build_ivf_part(trained, slices, index_dir / name, on_disk, plan.chunk_rows, on_add)
            if "ivfdata" in entry:
                entry["ivfdata"] = str(Path(name).with_name(entry["ivfdata"]))
        else:
            index = new_index()
            for chunk in iter_chunks(slices):
                index.add(chunk)
                if on_add:
                    on_add(len(chunk))
            tmp = index_dir / Path(name).with_name(f".{Path(name).name}.tmp")
            _faiss().write_index(index, str(tmp))
            tmp.replace(index_dir / name)
            entry = {"ntotal": int(index.ntotal)}
        out.append({"file": name, "offset": lo, **entry})
    return out


def _trained(files: Sequence[Path], counts: Sequence[int], plan: IvfPlan, seed: int):
    """The empty IVF-PQ of ``plan`` trained on a sample of the shards, serialized (each part starts from it)."""
    sample = sample_rows(files, counts, plan.train_size, seed)
    index = trained_ivfpq(sample.shape[1], plan.nlist, plan.pq_m, plan.nbits, plan.quantizer, sample)
    del sample
    return _faiss().serialize_index(index)


# ---------------------------------------------------------------------------------------------- opening


def read_part(path: Path, on_disk: bool):
    """One FAISS file; on-disk inverted lists are memory-mapped from the ``.ivfdata`` beside it."""
    faiss = _faiss()
    if not Path(path).is_file():
        raise XmcoreError(f"{path}: the FAISS file the manifest lists is missing; rebuild the index")
    if not on_disk:
        return faiss.read_index(str(path))
    with _faiss_silenced():
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)


def set_quantizer_search(index, nprobe: int) -> None:
    """An HNSW coarse quantizer looks at ``2 * nprobe`` (at least 64) candidates, to find the nprobe cells."""
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(64, 2 * nprobe)


def open_parts(paths: Sequence[Path], offsets: Sequence[int], on_disk: bool, configure: Callable[[Any], None]):
    """The index over several FAISS files: FAISS's ``IndexShards`` (each part searched, the top k merged;
    a part's ids shifted by the rows before it), or the one index itself."""
    faiss = _faiss()
    indexes = []
    for path in paths:
        index = read_part(path, on_disk)
        configure(index)
        indexes.append(index)
    if len(indexes) == 1:
        return indexes[0]
    expected = np.cumsum([0] + [i.ntotal for i in indexes[:-1]]).tolist()
    if list(offsets) != expected:
        raise XmcoreError(f"{Path(paths[0]).parent}: the shards' first rows {list(offsets)} do not follow their "
                          f"sizes ({expected}); the index was changed by hand: rebuild it")
    shards = faiss.IndexShards(indexes[0].d, True, True)  # threaded, successive ids
    for index in indexes:
        shards.add_shard(index)
    shards.referenced_objects = indexes
    return shards


def index_files(entry: dict[str, Any]) -> list[str]:
    """Every file of a modality's FAISS index (its manifest entry's ``index``), relative to the index folder."""
    shards = entry.get("shards")
    if not shards:
        return [entry["file"]]
    return [name for part in shards for name in (part["file"], part.get("ivfdata")) if name]


def open_index(index_dir: Path, entry: dict[str, Any], configure: Callable[[Any], None]):
    """A modality's FAISS index as its manifest entry (``index``) describes it: one file, or its shards
    under ``IndexShards``; ``configure`` sets each file's search parameters (nprobe, efSearch)."""
    shards = entry.get("shards") or [{"file": entry["file"], "offset": 0}]
    return open_parts([Path(index_dir) / s["file"] for s in shards], [int(s["offset"]) for s in shards],
                      bool(entry.get("on_disk")), configure)


# ---------------------------------------------------------------------------------------------- index folders


def layered(options) -> bool:
    """Whether ``xmcore index`` writes a modality's FAISS index here: in shards, on disk or under a budget."""
    return getattr(options, "shards", 1) > 1 or getattr(options, "on_disk", False) or \
        getattr(options, "max_memory", None) is not None


def explicit_plan(count: int, options) -> IvfPlan:
    """The IVF-PQ that ``--nlist/--pq-m/--nbits/--nprobe`` ask for, as a plan (no budget: nothing to explain)."""
    if options.refine:
        raise XmcoreError("--refine re-ranks with every vector held in memory; leave it out with --on-disk, "
                          "--shards or --max-memory (or build without them)")
    needed = max(options.nlist, 2**options.nbits)
    if count < needed:
        raise XmcoreError(
            f"an IVF-PQ index with --nlist {options.nlist} and --nbits {options.nbits} needs at least {needed} "
            f"vectors to train on, and this gallery has {count}; lower --nlist (about sqrt of the gallery size), "
            "or let --max-memory choose")
    return IvfPlan(options.nlist, options.pq_m, options.nbits, options.nprobe, min(count, 64 * needed), "flat",
                   1_000_000, "")


def write_index_parts(build, modality: str, shards: list[dict[str, Any]], added: int) -> dict[str, Any]:
    """The modality's FAISS files and manifest entry for a layered build (see :func:`layered`), read from its
    embedding shards a chunk at a time: ``index.shards`` lists each file with its first row and count."""
    from xmcore.search.faiss_index import new_faiss_index

    options, before = build.options, build.before(modality)
    if before:
        raise XmcoreError(f"--add: {build.out_dir}'s {modality} index was built with --shards, --on-disk or "
                          "--max-memory, and items are not added to such an index; build a new one of the whole gallery")
    files = [build.out_dir / s["file"] for s in shards]
    counts = [int(s["rows"]) for s in shards]
    count, dim = sum(counts), int(np.load(files[0], mmap_mode="r").shape[1])
    plan = None
    if options.kind == "ivfpq":
        plan = plan_ivf(count, dim, options.max_memory, options.on_disk) if options.max_memory else explicit_plan(count, options)
        if plan.why:
            print(f"{modality}: {plan.why}", flush=True)
    why = plan.why if plan is not None else ""
    if plan is not None and plan.kind == "flat":  # a small gallery under --max-memory: exact search
        options = replace(options, kind="flat", on_disk=False)
        plan = None
    parts = build_parts(files, counts, build.out_dir, f"faiss/{modality}{build.suffix}", options.shards,
                        new_index=lambda: new_faiss_index(dim, options), plan=plan, on_disk=options.on_disk)
    index = {"type": options.kind, "params": plan.params() if plan else options.params(),
             "ntotal": sum(p["ntotal"] for p in parts), "shards": parts, "on_disk": bool(options.on_disk)}
    if plan is not None:
        index["quantizer"] = plan.quantizer
    if options.max_memory:
        index.update(max_memory=options.max_memory, plan=why)
    return {"count": count, "dim": dim, "shards": shards, "index": index}


def open_faiss(index_dir: Path, entry: dict[str, Any]):
    """A modality's FAISS index for searching, its search-time parameters set, from its manifest ``index``."""
    from xmcore.search.faiss_index import IndexOptions, read_faiss, set_search_params

    options = IndexOptions.from_manifest(entry)
    if not entry.get("shards"):
        return read_faiss(Path(index_dir) / entry["file"], options)

    def configure(index) -> None:
        set_search_params(index, options)
        if options.kind == "ivfpq":
            set_quantizer_search(index, options.nprobe)

    return open_index(index_dir, entry, configure)
