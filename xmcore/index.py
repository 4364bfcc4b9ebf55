"""Search indexes: a trained run's embeddings of a gallery, a FAISS index, and the model to encode queries.

    xmcore index RUN_DIR --out INDEX_DIR [--data KEY=VALUE ...] [--index flat|hnsw|ivfpq]
    xmcore search INDEX_DIR --text "a red circle" [-k 10] [--json]

An index folder is self-contained::

    manifest.json            what is here: model, recipe, counts, dimensions, index type and parameters,
                             the SHA-256 of every file below (written last: no manifest, no index)
    model/recipe.yaml        the run's resolved recipe, encoder parameters rewritten to read from model/
    model/weights.pt         the encoders' and fusion's state dict (read with weights_only=True)
    model/<modality>-encoder/  what an encoder needs besides weights (e.g. a tokenizer), if anything
    embeddings/<m>-00000.npy L2-normalised float32 embeddings, in shards of --shard-size rows
    metadata/<m>.jsonl       one line per item: id, modality, path or caption, label, the item it belongs to
    media/                   copies of images that had no file of their own (generated, inside tar shards)
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
from typing import Any, Sequence

import numpy as np

from xmcore.errors import XmcoreError
from xmcore.io import atomic_write_bytes, atomic_write_text, file_sha256 as sha256, write_json, write_yaml

FORMAT = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
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


def gallery_items(data, splits: Sequence[str], modalities: Sequence[str]) -> dict[str, list[GalleryItem]]:
    """The items of ``splits`` per modality, each with its metadata (path or caption, label, owner)."""
    from xmcore.data import ImageFile

    unknown = [s for s in splits if s not in data.splits]
    if unknown:
        raise XmcoreError(f"--split: the data has no split {', '.join(unknown)}; it has: {', '.join(data.splits)}")
    out: dict[str, list[GalleryItem]] = {m: [] for m in modalities}
    for split_name in splits:
        split = data.splits[split_name]
        first, second = split.modalities
        offset_first = len(out.get(first, []))
        for modality in modalities:
            if modality not in split.items:
                raise XmcoreError(f"--modality: the data has no '{modality}' items; it has: {', '.join(split.modalities)}")
            labels = split.labels if modality == first else split.member_labels
            if labels is None and modality == second and split.labels is not None:
                labels = split.labels[split.owner]
            for j, item in enumerate(split.items[modality]):
                meta: dict[str, Any] = {"split": split_name}
                if isinstance(item, str):
                    meta["caption"] = item
                elif isinstance(item, ImageFile):
                    meta["path"] = str(Path(item.path).resolve())
                elif not str(item).startswith("<"):  # a described lazy item (e.g. a tar member), not a bare object
                    meta["source"] = str(item)[:200]
                if labels is not None:
                    meta["label"] = int(labels[j])
                if modality == second and first in modalities:
                    meta["belongs_to_row"] = offset_first + int(split.owner[j])
                out[modality].append(GalleryItem(item, meta))
    return out


# ---------------------------------------------------------------------------------------------- model


def export_model(module, recipe, model_dir: Path) -> None:
    """Weights, recipe and encoder assets of ``module`` into ``model_dir`` (see the module docstring).

    Every modality's encoder goes in, indexed or not: queries come from the other modality."""
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
    """The encoders and fusion stored in an index folder: embeds texts and images into the common space."""

    def __init__(self, model_dir: Path, plugins):
        import torch

        from xmcore.recipe import load_recipe, validate
        from xmcore.registry import BuildContext

        self.model_dir = Path(model_dir)
        recipe = validate(load_recipe(self.model_dir / "recipe.yaml", []), plugins)
        state = torch.load(self.model_dir / "weights.pt", map_location="cpu", weights_only=True)
        self.encoders = torch.nn.ModuleDict()
        for modality in sorted({k.split(".")[1] for k in state if k.startswith("encoders.")}):
            section = recipe.encoders[modality]
            ctx = BuildContext(seed=recipe.seed, base_dir=self.model_dir, modality=modality, train_items=lambda: [])
            self.encoders[modality] = section.component.build(section.params, ctx)
        dims = {m: int(e.output_dim) for m, e in self.encoders.items()}
        self.fusion = recipe.fusion.component.build(
            recipe.fusion.params, BuildContext(seed=recipe.seed, base_dir=self.model_dir, input_dims=dims, dim=recipe.fusion.dim)
        )
        holder = torch.nn.Module()
        holder.encoders, holder.fusion = self.encoders, self.fusion
        holder.load_state_dict(state)
        holder.eval()
        self.recipe = recipe

    def embed(self, modality: str, items: Sequence[Any]) -> np.ndarray:
        """L2-normalised embeddings of raw items (strings, PIL images) of one modality."""
        import torch

        from xmcore.data import materialize

        if modality not in self.encoders:
            raise XmcoreError(f"this index holds no '{modality}' encoder; it has: {', '.join(self.encoders)}")
        encoder = self.encoders[modality]
        batch = encoder.preprocessor.collate([encoder.preprocessor(materialize(x)) for x in items])
        with torch.no_grad():
            out = self.fusion(encoder(batch), modality)
        return torch.nn.functional.normalize(out.float(), dim=-1).numpy()


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


def _save_media(index_dir: Path, item_id: str, item: Any) -> str | None:
    """A copy of an image that has no file of its own, so that the index can show it."""
    from xmcore.data import materialize

    image = materialize(item)
    if not hasattr(image, "save"):
        return None
    import io

    path = index_dir / "media" / f"{item_id}.png"
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return f"media/{path.name}"


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
    """Embed a gallery with a run's best checkpoint and write (or extend, with ``add``) an index folder."""
    from xmcore import __version__
    from xmcore.run import best_checkpoint, rebuild_trained

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    options = options or IndexOptions()
    if options.kind not in INDEX_TYPES:
        raise XmcoreError(f"--index: unknown index type '{options.kind}'; choose one of {', '.join(INDEX_TYPES)}")
    source = run_dir / "recipe.yaml"
    if not source.is_file():
        raise XmcoreError(f"{run_dir}: no recipe.yaml; expected a run directory written by `xmcore run`")
    checkpoint = best_checkpoint(run_dir)
    checkpoint_sha = sha256(checkpoint)

    previous = None
    if (out_dir / "manifest.json").is_file():
        if not add:
            raise XmcoreError(f"{out_dir} already holds an index; pass --add to add items to it, or choose another --out")
        previous = read_manifest(out_dir)
        if previous["model"]["checkpoint_sha256"] != checkpoint_sha:
            raise XmcoreError(
                f"{out_dir} was built with another checkpoint ({previous['model']['checkpoint']}); items added to it must "
                "be embedded by the same model: index into a new --out instead"
            )
        options = IndexOptions.from_manifest(next(iter(previous["modalities"].values()))["index"])
    elif add:
        raise XmcoreError(f"--add: {out_dir} holds no index yet (no manifest.json); leave out --add to build one")

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
    from xmcore.cache import data_fingerprint

    job = {
        "checkpoint_sha256": checkpoint_sha,
        "recipe": recipe.resolved(),
        "splits": splits,
        "modalities": modalities,
        "shard_size": shard_size,
        "add_to": previous["checksums"] if previous else None,
        "content": {m: data_fingerprint([g.item for g in v]) for m, v in gallery.items()},
    }
    job_path = out_dir / "building.json"
    state: dict[str, Any] = {"job": job, "shards": {}}
    earlier = None
    if job_path.is_file():
        try:
            earlier = json.loads(job_path.read_text())
        except json.JSONDecodeError:
            earlier = None
    if earlier is not None and earlier.get("job") == json.loads(json.dumps(job)):
        state = earlier
        print(f"resuming: {len(state['shards'])} shards already written", file=sys.stderr)
    elif previous is None and any((out_dir / d).exists() for d in ("embeddings", "metadata", "faiss", "media", "model")):
        print("an interrupted build with other settings was found; starting over", file=sys.stderr)
        for folder in ("embeddings", "metadata", "faiss", "media", "model"):
            shutil.rmtree(out_dir / folder, ignore_errors=True)

    # Files an --add rewrites get the next generation's name; the manifest switches to them last, so an
    # interrupted --add leaves the index it started from intact (and a rerun starts from that again).
    generation = previous.get("generation", 0) + 1 if previous else 0
    suffix = f".g{generation}" if generation else ""
    batch_size = batch_size or recipe.eval.batch_size
    manifest_modalities = dict(previous["modalities"]) if previous else {}
    for modality in modalities:
        items = gallery[modality]
        before = previous["modalities"][modality] if previous else None
        start_row = before["count"] if before else 0
        first_shard = len(before["shards"]) if before else 0
        shards = list(before["shards"]) if before else []
        progress = _Progress(len(items), f"embedding {modality}")
        for k, lo in enumerate(range(0, len(items), shard_size)):
            name = f"embeddings/{modality}-{first_shard + k:05d}.npy"
            rows = items[lo:lo + shard_size]
            done = state["shards"].get(name)
            if done and (out_dir / name).is_file() and sha256(out_dir / name) == done["sha256"]:
                progress(len(rows))
            else:
                vectors = _embed_rows(module, modality, rows, batch_size, recipe.data.num_workers, progress)
                _save_npy(out_dir / name, vectors)
                state["shards"][name] = {"rows": len(rows), "sha256": sha256(out_dir / name)}
                write_json(job_path, state)
            shards.append({"file": name, "rows": len(rows)})
        progress.close()

        lines = []
        for row, entry in enumerate(items, start=start_row):
            meta = {"id": f"{modality}-{row}", "modality": modality, **entry.meta}
            if "path" not in meta and "caption" not in meta:
                media = _save_media(out_dir, meta["id"], entry.item)
                if media:
                    meta["media"] = media
            if "belongs_to_row" in meta:
                owner_modality = next(m for m in modalities if m != modality)
                owner_start = previous["modalities"][owner_modality]["count"] if previous else 0
                meta["belongs_to"] = f"{owner_modality}-{owner_start + meta.pop('belongs_to_row')}"
            lines.append(json.dumps(meta, ensure_ascii=False))
        meta_rel = f"metadata/{modality}{suffix}.jsonl"
        old = (out_dir / before["metadata"]).read_text() if before else ""
        atomic_write_text(out_dir / meta_rel, old + "".join(line + "\n" for line in lines))

        vectors = np.concatenate([np.load(out_dir / s["file"]) for s in shards[first_shard:]]) if items else None
        dim = int(vectors.shape[1]) if vectors is not None and len(vectors) else int(before["dim"])
        if before:
            index = _faiss().read_index(str(out_dir / before["index"]["file"]))
            if index.ntotal != before["count"]:
                raise XmcoreError(f"{out_dir / before['index']['file']}: holds {index.ntotal} vectors, the manifest "
                                  f"says {before['count']}; the index was changed by hand: rebuild it")
        else:
            index = new_faiss_index(dim, options, train_sample(vectors, options) if options.kind == "ivfpq" else None)
        if vectors is not None and len(vectors):
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        index_rel = f"faiss/{modality}{suffix}.index"
        (out_dir / "faiss").mkdir(exist_ok=True)
        _write_faiss(out_dir / index_rel, index)
        manifest_modalities[modality] = {
            "count": start_row + len(items),
            "dim": dim,
            "shards": shards,
            "metadata": meta_rel,
            "index": {"file": index_rel, "type": options.kind, "params": options.params(), "ntotal": int(index.ntotal)},
        }

    if previous is None:
        export_model(module, recipe, out_dir / "model")
    listed = [p for p in sorted((out_dir / "model").rglob("*")) if p.is_file() and not p.name.startswith(".")]
    listed += [out_dir / rel for entry in manifest_modalities.values()
               for rel in (entry["metadata"], entry["index"]["file"], *(s["file"] for s in entry["shards"]))]
    media = sorted((out_dir / "media").glob("*")) if (out_dir / "media").is_dir() else []
    manifest = {
        "format": FORMAT,
        "generation": generation,
        "xmcore": __version__,
        "created": previous["created"] if previous else time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"run_dir": str(run_dir.resolve()), "checkpoint": checkpoint.name, "checkpoint_sha256": checkpoint_sha,
                  "recipe": recipe.name, "dim": recipe.fusion.dim},
        "recipe": previous["recipe"] if previous else recipe.resolved(),  # the run's, --data applied
        "sources": (previous["sources"] if previous else []) + [{"splits": splits, "overrides": list(overrides)}],
        "modalities": manifest_modalities,
        "checksums": {str(p.relative_to(out_dir)): sha256(p) for p in listed},
        "media_checksums": {p.name: sha256(p) for p in media},
    }
    write_json(out_dir / "manifest.json", manifest)
    job_path.unlink(missing_ok=True)
    if previous:  # the files of the generation before, now that nothing points at them
        for modality in modalities:
            for rel in (previous["modalities"][modality]["metadata"], previous["modalities"][modality]["index"]["file"]):
                if rel not in (manifest_modalities[modality]["metadata"], manifest_modalities[modality]["index"]["file"]):
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

    def media_file(self, meta: dict[str, Any]) -> Path | None:
        """The image file of an item, if the index lists one: inside the index folder (checked against
        the manifest's checksum) or the item's own file; never a path that came from elsewhere."""
        if "media" in meta:
            root = self.dir.resolve()
            path = (self.dir / meta["media"]).resolve()
            expected = self.manifest.get("media_checksums", {}).get(path.name)
            if path.parent != root / "media" or not path.is_file() or expected is None or sha256(path) != expected:
                return None
            return path
        if "path" in meta:
            path = Path(meta["path"])
            return path if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() else None
        return None

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


def results_table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| rank | score | id | item | label |", "|---:|---:|---|---|---|"]
    for r in results:
        what = r.get("caption") or r.get("path") or r.get("media") or r.get("source", "")
        what = what.replace("|", "\\|")
        lines.append(f"| {r['rank']} | {r['score']:.4f} | {r['id']} | {what} | {r.get('label', '')} |")
    return "\n".join(lines) + "\n"

