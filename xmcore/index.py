"""Search indexes: a trained run's embeddings of a gallery, a FAISS index, and the model to encode queries.

    xmcore index RUN_DIR --out INDEX_DIR [--data KEY=VALUE ...] [--index flat|hnsw|ivfpq]
    xmcore search INDEX_DIR --text "a red circle" [-k 10] [--json]
    xmcore search INDEX_DIR --<modality> FILE      (a query file: --image photo.png, or any modality whose
                                                   encoder reads files, see xmcore.media)

An index folder is self-contained::

    manifest.json            what is here: model (with each encoder's preprocessing, e.g. its sample rate),
                             recipe, counts, dimensions, index type and parameters, media types, the
                             SHA-256 of every file below (written last: no manifest, no index)
    model/recipe.yaml        the run's resolved recipe, encoder parameters rewritten to read from model/
    model/weights.pt         the encoders' and fusion's state dict (read with weights_only=True)
    model/<modality>-encoder/  what an encoder needs besides weights (e.g. a tokenizer), if anything
    embeddings/<m>-00000.npy L2-normalised float32 embeddings, in shards of --shard-size rows
    metadata/<m>.jsonl       one line per item: id, modality, path or caption, media type, label, the item
                             it belongs to
    media/                   copies of items that had no file of their own (generated, inside tar shards):
                             images as PNG, other items as their plugin writes them (``item.to_file()``)
    faiss/<m>.index          one FAISS index per modality, inner product on normalised vectors

Building is resumable: shards already written (and recorded, with their checksum, in
``building.json``) are kept when the same command runs again.  ``--add`` embeds further items into
an existing index with the model stored in it; their ids continue from the last.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np

from xmcore.errors import XmcoreError
from xmcore.io import atomic_write_bytes, atomic_write_text, file_sha256 as sha256, write_json, write_yaml
from xmcore.media import item_file, query_reader, servable_type

FORMAT = 1
INDEX_TYPES = ("flat", "hnsw", "ivfpq")


# ---------------------------------------------------------------------------------------------- FAISS


@dataclass
class IndexOptions:
    """The FAISS index kind and its parameters (all inner product on normalised vectors)."""

    kind: str = "flat"
    hnsw_m: int = 32  # HNSW: links per node
    ef_construction: int = 200  # HNSW: candidate list while building
    ef_search: int = 128  # HNSW: candidate list while searching (recall <-> speed)
    nlist: int = 1024  # IVF-PQ: coarse cells
    pq_m: int = 32  # IVF-PQ: sub-quantizers (must divide the dimension)
    nbits: int = 8  # IVF-PQ: bits per sub-quantizer code
    nprobe: int = 32  # IVF-PQ: cells visited per query (recall <-> speed)
    refine: int = 0  # IVF-PQ: re-rank refine * k candidates with the exact vectors (0: off)

    def params(self) -> dict[str, int]:
        if self.kind == "hnsw":
            return {"hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}
        if self.kind == "ivfpq":
            return {"nlist": self.nlist, "pq_m": self.pq_m, "nbits": self.nbits, "nprobe": self.nprobe, "refine": self.refine}
        return {}

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> "IndexOptions":
        return cls(kind=entry["type"], **entry.get("params", {}))


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise XmcoreError("search indexes need FAISS: pip install faiss-cpu") from None
    return faiss


def new_faiss_index(dim: int, options: IndexOptions, train: np.ndarray | None = None):
    """An empty index of ``options.kind`` (trained on ``train`` where the kind needs training)."""
    faiss = _faiss()
    ip = faiss.METRIC_INNER_PRODUCT
    if options.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if options.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, options.hnsw_m, ip)
        index.hnsw.efConstruction = options.ef_construction
        index.hnsw.efSearch = options.ef_search
        return index
    if options.kind == "ivfpq":
        if dim % options.pq_m:
            raise XmcoreError(f"--pq-m {options.pq_m} must divide the embedding dimension {dim}")
        needed = max(options.nlist, 2**options.nbits)
        if train is None or len(train) < needed:
            raise XmcoreError(
                f"an IVF-PQ index with --nlist {options.nlist} and --nbits {options.nbits} needs at least {needed} "
                f"vectors to train on, and this gallery has {0 if train is None else len(train)}; lower --nlist "
                "(about sqrt of the gallery size) or use --index flat or hnsw"
            )
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, options.nlist, options.pq_m, options.nbits, ip)
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        index.nprobe = options.nprobe
        if options.refine:
            index = faiss.IndexRefineFlat(index)
            index.k_factor = float(options.refine)
        return index
    raise XmcoreError(f"--index: unknown index type '{options.kind}'; choose one of {', '.join(INDEX_TYPES)}")


def set_search_params(index, options: IndexOptions) -> None:
    """What a written index does not remember: HNSW's efSearch, IVF's nprobe, the refine factor."""
    faiss = _faiss()
    if options.kind == "hnsw":
        index.hnsw.efSearch = options.ef_search
    elif options.kind == "ivfpq":
        base = index
        if isinstance(index, faiss.IndexRefine):
            index.k_factor = float(options.refine)
            base = faiss.downcast_index(index.base_index)
        faiss.extract_index_ivf(base).nprobe = options.nprobe


def train_sample(vectors: np.ndarray, options: IndexOptions, seed: int = 0) -> np.ndarray:
    """IVF-PQ trains on a sample: 64 points per coarse cell and per PQ centroid (FAISS wants >= 39)."""
    cap = 64 * max(options.nlist, 2**options.nbits)
    if len(vectors) <= cap:
        return vectors
    return vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), cap, replace=False))]


# ---------------------------------------------------------------------------------------------- files


def _save_npy(path: Path, array: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    atomic_write_bytes(path, buffer.getvalue())


def _write_faiss(path: Path, index) -> None:
    faiss = _faiss()
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


def read_manifest(index_dir: Path) -> dict[str, Any]:
    path = Path(index_dir) / "manifest.json"
    if not path.is_file():
        hint = " (an interrupted build: run the same `xmcore index` command again to finish it)" if (
            Path(index_dir) / "building.json").is_file() else ""
        raise XmcoreError(f"{index_dir}: no manifest.json; expected a folder written by `xmcore index`{hint}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise XmcoreError(f"{path}: not valid JSON ({exc}); rebuild the index") from None
    if manifest.get("format") != FORMAT:
        raise XmcoreError(f"{path}: index format {manifest.get('format')!r}, this xmcore reads format {FORMAT}")
    return manifest


def verify(index_dir: Path, manifest: dict[str, Any] | None = None, embeddings: bool = True) -> list[str]:
    """The files whose checksum differs from the manifest's (empty: all intact).

    ``embeddings=False`` skips the embedding shards and media: what a search never reads at start-up."""
    manifest = manifest or read_manifest(index_dir)
    expected = dict(manifest["checksums"])
    if embeddings:
        expected.update({f"media/{name}": digest for name, digest in manifest.get("media_checksums", {}).items()})
    bad = []
    for rel, digest in expected.items():
        if not embeddings and rel.startswith("embeddings/"):
            continue
        path = Path(index_dir) / rel
        if not path.is_file() or sha256(path) != digest:
            bad.append(rel)
    return bad


# ---------------------------------------------------------------------------------------------- gallery


@dataclass
class GalleryItem:
    item: Any  # what the encoder's preprocessor reads (after materialising a LazyItem)
    meta: dict[str, Any]
    owner: tuple[str, int] | None = None  # (owner modality, its row among this build's items), for a member


def describe_item(item: Any) -> dict[str, Any]:
    """What the metadata says of an item: a caption, a file (and its media type, when an index may serve
    it), or a short description of a lazy item without a file of its own (e.g. a tar member)."""
    from xmcore.data import LazyItem

    if isinstance(item, str):
        return {"caption": item}
    path = getattr(item, "path", None) if isinstance(item, LazyItem) else None
    if path is not None:
        meta = {"path": str(Path(path).resolve())}
        kind = servable_type(path)
        return meta | ({"media_type": kind} if kind else {})
    if not str(item).startswith("<"):  # a described item, not a bare object
        return {"source": str(item)[:200]}
    return {}


def gallery_items(data, splits: Sequence[str], modalities: Sequence[str]) -> dict[str, list[GalleryItem]]:
    """The items of ``splits`` per modality, each with its metadata (caption or file, label) and owner.

    A split's first modality holds the owners; every other (member) modality's item ``j`` belongs to
    owner ``split.owner[j]``."""
    unknown = [s for s in splits if s not in data.splits]
    if unknown:
        raise XmcoreError(f"--split: the data has no split {', '.join(unknown)}; it has: {', '.join(data.splits)}")
    out: dict[str, list[GalleryItem]] = {m: [] for m in modalities}
    for split_name in splits:
        split = data.splits[split_name]
        first = split.modalities[0]
        offset_first = len(out.get(first, []))
        for modality in modalities:
            if modality not in split.items:
                raise XmcoreError(f"--modality: the data has no '{modality}' items; it has: {', '.join(split.modalities)}")
            if modality == first:
                labels = split.labels
            else:
                labels = split.member_labels
                if labels is None and split.labels is not None:
                    labels = split.labels[split.owner]
            for j, item in enumerate(split.items[modality]):
                meta: dict[str, Any] = {"split": split_name, **describe_item(item)}
                if labels is not None:
                    meta["label"] = int(labels[j])
                owner = (first, offset_first + int(split.owner[j])) if modality != first and first in modalities else None
                out[modality].append(GalleryItem(item, meta, owner))
    return out


# ---------------------------------------------------------------------------------------------- model


def export_model(module, recipe, model_dir: Path) -> None:
    """Weights, recipe and encoder assets of ``module`` into ``model_dir`` (see the module docstring).

    Every modality's encoder goes in, indexed or not: queries come from the other modalities."""
    import torch

    model_dir.mkdir(parents=True, exist_ok=True)
    resolved = recipe.resolved()
    for modality in module.modalities:
        encoder = module.encoders[modality]
        export = getattr(encoder, "export", None)
        changes = export(model_dir / f"{modality}-encoder") if export else {}
        for key, value in changes.items():
            resolved["encoders"][modality][key] = value
        resolved["encoders"][modality].pop("freeze", None)
    state = {k: v for k, v in module.state_dict().items() if k.startswith(("fusion.", "encoders."))}
    tmp = model_dir / ".weights.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(model_dir / "weights.pt")
    write_yaml(model_dir / "recipe.yaml", resolved)


class QueryModel:
    """The encoders and fusion stored in an index folder (or, through :meth:`of`, a trained run's): reads query
    files and embeds items of any of its modalities into the common space."""

    def __init__(self, model_dir: Path, plugins):
        import torch

        from xmcore.recipe import load_recipe, validate
        from xmcore.registry import BuildContext

        model_dir = Path(model_dir)
        recipe = validate(load_recipe(model_dir / "recipe.yaml", []), plugins)
        state = torch.load(model_dir / "weights.pt", map_location="cpu", weights_only=True)
        encoders = torch.nn.ModuleDict()
        for modality in sorted({k.split(".")[1] for k in state if k.startswith("encoders.")}):
            section = recipe.encoders[modality]
            ctx = BuildContext(seed=recipe.seed, base_dir=model_dir, modality=modality, train_items=lambda: [])
            encoders[modality] = section.component.build(section.params, ctx)
        dims = {m: int(e.output_dim) for m, e in encoders.items()}
        fusion = recipe.fusion.component.build(
            recipe.fusion.params, BuildContext(seed=recipe.seed, base_dir=model_dir, input_dims=dims, dim=recipe.fusion.dim)
        )
        holder = torch.nn.Module()
        holder.encoders, holder.fusion = encoders, fusion
        holder.load_state_dict(state)
        self._use(encoders, fusion, recipe, "this index")
        self.model_dir = model_dir

    @classmethod
    def of(cls, encoders, fusion, recipe, holder: str) -> "QueryModel":
        """The same for encoders and fusion built elsewhere (a trained run's module, weights loaded);
        ``holder`` names them in messages (``"the run runs/x"``)."""
        model = cls.__new__(cls)
        model._use(encoders, fusion, recipe, holder)
        model.model_dir = None
        return model

    def _use(self, encoders, fusion, recipe, holder: str) -> None:
        import torch

        self.encoders = encoders if isinstance(encoders, torch.nn.ModuleDict) else torch.nn.ModuleDict(dict(encoders))
        self.fusion = fusion
        self.encoders.eval()
        self.fusion.eval()
        self.recipe = recipe
        self.holder = holder

    def _encoder(self, modality: str):
        if modality not in self.encoders:
            raise XmcoreError(f"{self.holder} holds no '{modality}' encoder; it has: {', '.join(self.encoders)}")
        return self.encoders[modality]

    @property
    def device(self):
        """Where the weights are (the first parameter's device; the CPU for a model without any)."""
        import torch

        for module in (*self.encoders.values(), self.fusion):
            for tensor in (*module.parameters(), *module.buffers()):
                return tensor.device
        return torch.device("cpu")

    def to(self, device) -> "QueryModel":
        self.encoders.to(device)
        self.fusion.to(device)
        return self

    @property
    def file_modalities(self) -> list[str]:
        """The modalities whose queries may be files (their encoder reads them; images always)."""
        return [m for m, encoder in self.encoders.items() if query_reader(encoder, m) is not None]

    def read_query(self, modality: str, file: BinaryIO) -> Any:
        """A query file (an open binary file) as a raw item of ``modality``; :class:`QueryError` if unusable."""
        reader = query_reader(self._encoder(modality), modality)
        if reader is None:
            takes = ", ".join(self.file_modalities) or "none"
            raise XmcoreError(f"the '{modality}' encoder of {self.holder} reads no query files (it has no "
                              f"read_query); the modalities it takes files of: {takes}")
        return reader(file)

    def embed(self, modality: str, items: Sequence[Any]) -> np.ndarray:
        """L2-normalised embeddings of raw items (strings, PIL images, what ``read_query`` returns) of one modality."""
        return self.embed_tensor(modality, items).cpu().numpy()

    def embed_tensor(self, modality: str, items: Sequence[Any]):
        """The same as a float32 tensor on the model's device; the items are one batch."""
        import torch

        from xmcore.data import materialize

        encoder = self._encoder(modality)
        batch = encoder.preprocessor.collate([encoder.preprocessor(materialize(x)) for x in items])
        device = self.device
        if device.type != "cpu":  # preprocessors collate on the CPU; Lightning is imported only when it must move
            from pytorch_lightning.utilities import move_data_to_device

            batch = move_data_to_device(batch, device)
        with torch.no_grad():
            out = self.fusion(encoder(batch), modality)
        return torch.nn.functional.normalize(out.float(), dim=-1)


# ---------------------------------------------------------------------------------------------- building


def _embed_rows(module, modality: str, items: Sequence[GalleryItem], batch_size: int, num_workers: int, progress) -> np.ndarray:
    import torch
    from torch.utils.data import DataLoader

    from xmcore.data import ItemDataset
    from xmcore.datamodule import ItemCollate

    preprocessor = module.encoders[modality].preprocessor
    loader = DataLoader(ItemDataset([g.item for g in items], preprocessor), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=ItemCollate(preprocessor))
    out = []
    with torch.no_grad():
        for batch in loader:
            out.append(module.embed(modality, batch["item"]).float().numpy())
            progress(len(batch["index"]))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _save_media(index_dir: Path, item_id: str, item: Any) -> dict[str, str]:
    """A copy of an item that has no file of its own (a generated image or clip), so that the index can
    show it: ``{"media": ..., "media_type": ...}``, or ``{}`` for an item that cannot be a file."""
    from xmcore.data import materialize

    written = item_file(materialize(item))
    kind = servable_type(f"item{written[1]}") if written else None
    if kind is None:
        return {}
    data, suffix = written
    path = index_dir / "media" / f"{item_id}{suffix}"
    atomic_write_bytes(path, data)
    return {"media": f"media/{path.name}", "media_type": kind}


class _Progress:
    def __init__(self, total: int, desc: str):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True)
        except ImportError:  # pragma: no cover - tqdm comes with Lightning
            self.bar = None

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Build:
    """One run of ``build_index``: where it writes, what it extends, and its record of finished shards."""

    out_dir: Path
    previous: dict[str, Any] | None  # the manifest of the index an --add extends
    options: IndexOptions
    state: dict[str, Any]  # building.json: the job and its finished shards
    suffix: str  # of the files an --add rewrites (the next generation's)

    def before(self, modality: str) -> dict[str, Any] | None:
        return self.previous["modalities"][modality] if self.previous else None


def _previous_index(out_dir: Path, checkpoint_sha: str, add: bool) -> dict[str, Any] | None:
    """The manifest of the index that ``--add`` extends (``None`` for a new one), checked against the command."""
    if (out_dir / "manifest.json").is_file():
        if not add:
            raise XmcoreError(f"{out_dir} already holds an index; pass --add to add items to it, or choose another --out")
        previous = read_manifest(out_dir)
        if previous["model"]["checkpoint_sha256"] != checkpoint_sha:
            raise XmcoreError(
                f"{out_dir} was built with another checkpoint ({previous['model']['checkpoint']}); items added to it must "
                "be embedded by the same model: index into a new --out instead"
            )
        return previous
    if add:
        raise XmcoreError(f"--add: {out_dir} holds no index yet (no manifest.json); leave out --add to build one")
    return None


def _resume_state(out_dir: Path, job: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """``building.json`` of an interrupted build of this exact job (its shards are kept), or a fresh one;
    the folders of an interrupted build of another job are cleared."""
    state: dict[str, Any] = {"job": job, "shards": {}}
    earlier = None
    job_path = out_dir / "building.json"
    if job_path.is_file():
        try:
            earlier = json.loads(job_path.read_text())
        except json.JSONDecodeError:
            earlier = None
    if earlier is not None and earlier.get("job") == json.loads(json.dumps(job)):
        print(f"resuming: {len(earlier['shards'])} shards already written", file=sys.stderr)
        return earlier
    if previous is None and any((out_dir / d).exists() for d in ("embeddings", "metadata", "faiss", "media", "model")):
        print("an interrupted build with other settings was found; starting over", file=sys.stderr)
        for folder in ("embeddings", "metadata", "faiss", "media", "model"):
            shutil.rmtree(out_dir / folder, ignore_errors=True)
    return state


def _embed_shards(build: _Build, module, modality: str, items: list[GalleryItem], shard_size: int, batch_size: int,
                  num_workers: int) -> list[dict[str, Any]]:
    """Every shard of the modality's embeddings (those an earlier --add wrote, then this build's), skipping
    the ones ``building.json`` records as written and intact."""
    before = build.before(modality)
    first_shard = len(before["shards"]) if before else 0
    shards = list(before["shards"]) if before else []
    progress = _Progress(len(items), f"embedding {modality}")
    for k, lo in enumerate(range(0, len(items), shard_size)):
        name = f"embeddings/{modality}-{first_shard + k:05d}.npy"
        rows = items[lo:lo + shard_size]
        done = build.state["shards"].get(name)
        if done and (build.out_dir / name).is_file() and sha256(build.out_dir / name) == done["sha256"]:
            progress(len(rows))
        else:
            _save_npy(build.out_dir / name, _embed_rows(module, modality, rows, batch_size, num_workers, progress))
            build.state["shards"][name] = {"rows": len(rows), "sha256": sha256(build.out_dir / name)}
            write_json(build.out_dir / "building.json", build.state)
        shards.append({"file": name, "rows": len(rows)})
    progress.close()
    return shards


def _write_metadata(build: _Build, modality: str, items: list[GalleryItem]) -> tuple[str, list[str]]:
    """The modality's metadata file (an --add's rows after the earlier ones), copies of items without a file
    of their own, and the media types its items are served as."""
    before = build.before(modality)
    start_row = before["count"] if before else 0
    media_types = set(before.get("media_types", [])) if before else set()
    lines = []
    for row, entry in enumerate(items, start=start_row):
        meta = {"id": f"{modality}-{row}", "modality": modality, **entry.meta}
        if "caption" not in meta and "media_type" not in meta:  # no file of its own, or one no browser shows
            meta.update(_save_media(build.out_dir, meta["id"], entry.item))
        if entry.owner is not None:
            owner, owner_row = entry.owner
            meta["belongs_to"] = f"{owner}-{(build.before(owner) or {}).get('count', 0) + owner_row}"
        if "media_type" in meta:
            media_types.add(meta["media_type"])
        lines.append(json.dumps(meta, ensure_ascii=False))
    meta_rel = f"metadata/{modality}{build.suffix}.jsonl"
    old = (build.out_dir / before["metadata"]).read_text() if before else ""
    atomic_write_text(build.out_dir / meta_rel, old + "".join(line + "\n" for line in lines))
    return meta_rel, sorted(media_types)


def _write_modality_index(build: _Build, modality: str, shards: list[dict[str, Any]], added: int) -> dict[str, Any]:
    """The modality's FAISS index (the earlier one with this build's vectors added) and its manifest entry."""
    before = build.before(modality)
    first_shard = len(before["shards"]) if before else 0
    vectors = np.concatenate([np.load(build.out_dir / s["file"]) for s in shards[first_shard:]]) if added else None
    dim = int(vectors.shape[1]) if vectors is not None and len(vectors) else int(before["dim"])
    options = build.options
    if before:
        index = _faiss().read_index(str(build.out_dir / before["index"]["file"]))
        if index.ntotal != before["count"]:
            raise XmcoreError(f"{build.out_dir / before['index']['file']}: holds {index.ntotal} vectors, the manifest "
                              f"says {before['count']}; the index was changed by hand: rebuild it")
    else:
        index = new_faiss_index(dim, options, train_sample(vectors, options) if options.kind == "ivfpq" else None)
    if vectors is not None and len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    index_rel = f"faiss/{modality}{build.suffix}.index"
    (build.out_dir / "faiss").mkdir(exist_ok=True)
    _write_faiss(build.out_dir / index_rel, index)
    return {
        "count": (before["count"] if before else 0) + added,
        "dim": dim,
        "shards": shards,
        "index": {"file": index_rel, "type": options.kind, "params": options.params(), "ntotal": int(index.ntotal)},
    }


def _write_manifest(build: _Build, run_dir: Path, checkpoint: Path, checkpoint_sha: str, recipe, module,
                    source: dict[str, Any], modalities: dict[str, Any]) -> dict[str, Any]:
    """manifest.json, written last: the checksum of every file, the model and how it reads each modality."""
    from xmcore import __version__

    out_dir, previous = build.out_dir, build.previous
    listed = [p for p in sorted((out_dir / "model").rglob("*")) if p.is_file() and not p.name.startswith(".")]
    listed += [out_dir / rel for entry in modalities.values()
               for rel in (entry["metadata"], entry["index"]["file"], *(s["file"] for s in entry["shards"]))]
    media = sorted((out_dir / "media").glob("*")) if (out_dir / "media").is_dir() else []
    # What turns a raw item into model input (a sample rate, a window, a vocabulary): the feature cache's key,
    # and what a query file is converted to before it is embedded.
    preprocessing = {m: repr(module.encoders[m].preprocessor) for m in module.modalities}
    manifest = {
        "format": FORMAT,
        "generation": previous.get("generation", 0) + 1 if previous else 0,
        "xmcore": __version__,
        "created": previous["created"] if previous else time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"run_dir": str(run_dir.resolve()), "checkpoint": checkpoint.name, "checkpoint_sha256": checkpoint_sha,
                  "recipe": recipe.name, "dim": recipe.fusion.dim,
                  "preprocessing": previous["model"].get("preprocessing", preprocessing) if previous else preprocessing},
        "recipe": previous["recipe"] if previous else recipe.resolved(),  # the run's, --data applied
        "sources": (previous["sources"] if previous else []) + [source],
        "modalities": modalities,
        "checksums": {str(p.relative_to(out_dir)): sha256(p) for p in listed},
        "media_checksums": {p.name: sha256(p) for p in media},
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def build_index(
    run_dir: Path,
    out_dir: Path,
    plugins,
    overrides: Sequence[str] = (),
    splits: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    options: IndexOptions | None = None,
    shard_size: int = 50_000,
    add: bool = False,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Embed a gallery with a run's best checkpoint and write (or extend, with ``add``) an index folder.

    The phases: check the command against the folder; rebuild the trained model and list the gallery;
    per modality, embed shards (resumable), write metadata and the FAISS index; store the model; write
    the manifest last."""
    from xmcore.cache import data_fingerprint
    from xmcore.run import best_checkpoint, rebuild_trained

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    options = options or IndexOptions()
    if options.kind not in INDEX_TYPES:
        raise XmcoreError(f"--index: unknown index type '{options.kind}'; choose one of {', '.join(INDEX_TYPES)}")
    if not (run_dir / "recipe.yaml").is_file():
        raise XmcoreError(f"{run_dir}: no recipe.yaml; expected a run directory written by `xmcore run`")
    checkpoint = best_checkpoint(run_dir)
    checkpoint_sha = sha256(checkpoint)
    previous = _previous_index(out_dir, checkpoint_sha, add)
    if previous:
        options = IndexOptions.from_manifest(next(iter(previous["modalities"].values()))["index"])

    out_dir.mkdir(parents=True, exist_ok=True)
    recipe, built, module, _ = rebuild_trained(run_dir, checkpoint, overrides, plugins, None, "--data")
    module.eval()
    data = built.data
    splits = list(splits or data.splits)
    modalities = list(modalities or (previous["modalities"] if previous else data.modalities))
    if previous is not None and set(modalities) - set(previous["modalities"]):
        raise XmcoreError(f"--add: the index holds {', '.join(previous['modalities'])} only")
    gallery = gallery_items(data, splits, modalities)
    if not any(gallery.values()) or (previous is None and not all(gallery.values())):
        empty = [m for m in modalities if not gallery[m]]
        raise XmcoreError(f"the gallery has no {', '.join(empty)} items in the splits {', '.join(splits)}")

    # Resumable: a record of the shards written so far, valid for this exact command and this exact content.
    job = {
        "checkpoint_sha256": checkpoint_sha,
        "recipe": recipe.resolved(),
        "splits": splits,
        "modalities": modalities,
        "shard_size": shard_size,
        "add_to": previous["checksums"] if previous else None,
        "content": {m: data_fingerprint([g.item for g in v]) for m, v in gallery.items()},
    }
    # Files an --add rewrites get the next generation's name; the manifest switches to them last, so an
    # interrupted --add leaves the index it started from intact (and a rerun starts from that again).
    generation = previous.get("generation", 0) + 1 if previous else 0
    build = _Build(out_dir, previous, options, _resume_state(out_dir, job, previous), f".g{generation}" if generation else "")
    entries = dict(previous["modalities"]) if previous else {}
    for modality in modalities:
        items = gallery[modality]
        shards = _embed_shards(build, module, modality, items, shard_size, batch_size or recipe.eval.batch_size,
                               recipe.data.num_workers)
        metadata, media_types = _write_metadata(build, modality, items)
        entries[modality] = {**_write_modality_index(build, modality, shards, len(items)), "metadata": metadata,
                             "media_types": media_types}

    if previous is None:
        export_model(module, recipe, out_dir / "model")
    manifest = _write_manifest(build, run_dir, checkpoint, checkpoint_sha, recipe, module,
                               {"splits": splits, "overrides": list(overrides)}, entries)
    (out_dir / "building.json").unlink(missing_ok=True)
    if previous:  # the files of the generation before, now that nothing points at them
        for modality in modalities:
            for rel in (previous["modalities"][modality]["metadata"], previous["modalities"][modality]["index"]["file"]):
                if rel not in (entries[modality]["metadata"], entries[modality]["index"]["file"]):
                    (out_dir / rel).unlink(missing_ok=True)
    return manifest


# ---------------------------------------------------------------------------------------------- searching


class SearchIndex:
    """An index folder opened for queries: FAISS indexes, metadata and the query model."""

    def __init__(self, index_dir: Path, plugins, check: bool = True):
        self.dir = Path(index_dir)
        self.manifest = read_manifest(self.dir)
        if check:
            bad = verify(self.dir, self.manifest, embeddings=False)
            if bad:
                raise XmcoreError(
                    f"{self.dir}: {len(bad)} files differ from the manifest ({', '.join(bad[:5])}); the index is "
                    "damaged or was changed by hand: rebuild it with `xmcore index`"
                )
        faiss = _faiss()
        self.indexes, self.items = {}, {}
        for modality, entry in self.manifest["modalities"].items():
            index = faiss.read_index(str(self.dir / entry["index"]["file"]))
            set_search_params(index, IndexOptions.from_manifest(entry["index"]))
            self.indexes[modality] = index
            with open(self.dir / entry["metadata"], encoding="utf-8") as fh:
                self.items[modality] = [json.loads(line) for line in fh if line.strip()]
        self.by_id = {meta["id"]: meta for rows in self.items.values() for meta in rows}
        self.model = QueryModel(self.dir / "model", plugins)

    def media_file(self, meta: dict[str, Any]) -> tuple[Path, str] | None:
        """The file that shows an item and its media type, if the index lists one: a copy inside the index
        folder (checked against the manifest's checksum) or the item's own file, of a type an index serves
        (pictures, sound, film; never text, documents or SVG); never a path that came from elsewhere."""
        if "media" in meta:
            root = self.dir.resolve()
            path = (self.dir / meta["media"]).resolve()
            expected = self.manifest.get("media_checksums", {}).get(path.name)
            if path.parent != root / "media" or not path.is_file() or expected is None or sha256(path) != expected:
                return None
        elif "path" in meta:
            path = Path(meta["path"])
            if not path.is_file():
                return None
        else:
            return None
        kind = servable_type(path)
        return (path, kind) if kind else None

    def media_type(self, meta: dict[str, Any]) -> str | None:
        """The media type an item's file is served as (from its name: no file is opened), or ``None``."""
        return servable_type(meta.get("media") or meta.get("path"))

    @property
    def file_modalities(self) -> list[str]:
        """The modalities a query file may be of (their encoder reads files), whether indexed or not."""
        return self.model.file_modalities

    def read_query(self, modality: str, file: BinaryIO) -> Any:
        """A query file as a raw item of ``modality`` (:class:`xmcore.errors.QueryError` says why it cannot be)."""
        return self.model.read_query(modality, file)

    @property
    def modalities(self) -> list[str]:
        return list(self.manifest["modalities"])

    def default_target(self, query_modality: str) -> str:
        others = [m for m in self.modalities if m != query_modality]
        return others[0] if others else query_modality

    def search(self, query_modality: str, query: Any, k: int = 10, target: str | None = None) -> list[dict[str, Any]]:
        target = target or self.default_target(query_modality)
        if target not in self.indexes:
            raise XmcoreError(f"--target: this index holds {', '.join(self.modalities)}, not '{target}'")
        vector = self.model.embed(query_modality, [query])
        scores, rows = self.indexes[target].search(np.ascontiguousarray(vector, dtype=np.float32), k)
        return [
            {"rank": rank, "score": float(score), **self.items[target][row]}
            for rank, (score, row) in enumerate(zip(scores[0], rows[0], strict=True), start=1)
            if row >= 0
        ]

    def query_warnings(self, query_modality: str, query: Any) -> list[str]:
        """What the query's encoder says about this query (e.g. most words unknown to it); ``[]`` when nothing."""
        encoder = self.model.encoders[query_modality] if query_modality in self.model.encoders else None
        notes = getattr(encoder, "query_warnings", None)  # optional: an encoder need not subclass xmcore's Encoder
        return [str(n) for n in notes(query)] if notes else []

    def describe(self) -> dict[str, Any]:
        return {m: {"count": e["count"], "index": e["index"]["type"]} for m, e in self.manifest["modalities"].items()}

    def preprocessing(self) -> dict[str, str]:
        """Each encoder's preprocessing as the manifest records it (an index built before it was recorded:
        as the stored model rebuilds it)."""
        recorded = self.manifest["model"].get("preprocessing")
        return dict(recorded) if recorded else {m: repr(e.preprocessor) for m, e in self.model.encoders.items()}


def results_table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| rank | score | id | item | label |", "|---:|---:|---|---|---|"]
    for r in results:
        what = r.get("caption") or r.get("path") or r.get("media") or r.get("source", "")
        what = what.replace("|", "\\|")
        lines.append(f"| {r['rank']} | {r['score']:.4f} | {r['id']} | {what} | {r.get('label', '')} |")
    return "\n".join(lines) + "\n"

