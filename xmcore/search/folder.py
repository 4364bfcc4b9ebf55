"""The index folder format: its manifest and checksums, the check of a folder against them, and the state an
interrupted build resumes from.

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

While a build runs, ``building.json`` records the job and each finished shard with its checksum, so that
the same command run again keeps them; a build on several processes (:mod:`xmcore.search.predict`) keeps
each process's records and metadata shards in ``building/`` until the manifest is written.  An ``--add`` writes the files it changes under the next
generation's name (``metadata/<m>.g1.jsonl``) and switches the manifest to them last.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmcore.errors import XmcoreError
from xmcore.io import atomic_write_bytes, file_sha256 as sha256, write_json
from xmcore.media import item_file, servable_type
from xmcore.search.faiss_index import IndexOptions
from xmcore.search.ivf import index_files

FORMAT = 1
FORMAT_SHARDED = 2  # a modality's FAISS index in shards or on disk (index.shards): what format 1 readers cannot open
BUILD_FOLDERS = ("embeddings", "metadata", "faiss", "media", "model", "building")


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
    if manifest.get("format") not in (FORMAT, FORMAT_SHARDED):
        raise XmcoreError(f"{path}: index format {manifest.get('format')!r}, this xmcore reads formats {FORMAT} and "
                          f"{FORMAT_SHARDED}")
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


def save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    atomic_write_bytes(path, buffer.getvalue())


def save_media(index_dir: Path, item_id: str, item: Any) -> dict[str, str]:
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


@dataclass
class Build:
    """One run of ``build_index``: where it writes, what it extends, and its record of finished shards."""

    out_dir: Path
    previous: dict[str, Any] | None  # the manifest of the index an --add extends
    options: IndexOptions
    state: dict[str, Any]  # building.json: the job and its finished shards
    suffix: str  # of the files an --add rewrites (the next generation's)
    checksums: dict[str, str] = field(default_factory=dict)  # of files taken while writing them: not read again

    def before(self, modality: str) -> dict[str, Any] | None:
        return self.previous["modalities"][modality] if self.previous else None

    def shard_done(self, name: str) -> bool:
        """Whether ``building.json`` records the shard as written, and its file still has that checksum."""
        done = self.state["shards"].get(name)
        return bool(done) and (self.out_dir / name).is_file() and sha256(self.out_dir / name) == done["sha256"]


def previous_index(out_dir: Path, checkpoint_sha: str, add: bool) -> dict[str, Any] | None:
    """The manifest of the index that ``--add`` extends (``None`` for a new one), checked against the command."""
    if (out_dir / "manifest.json").is_file():
        if not add:
            raise XmcoreError(f"{out_dir} already holds an index; pass --add to add items to it, or choose another --out")
        previous = read_manifest(out_dir)
        bad = verify(out_dir, previous, embeddings=False)  # the FAISS indexes an --add reads and extends
        if bad:
            raise XmcoreError(f"--add: {out_dir}: {len(bad)} files differ from the manifest ({', '.join(bad[:5])}); "
                              "the index is damaged or was changed by hand: rebuild it with `xmcore index`")
        if previous["model"]["checkpoint_sha256"] != checkpoint_sha:
            raise XmcoreError(
                f"{out_dir} was built with another checkpoint ({previous['model']['checkpoint']}); items added to it must "
                "be embedded by the same model: index into a new --out instead"
            )
        return previous
    if add:
        raise XmcoreError(f"--add: {out_dir} holds no index yet (no manifest.json); leave out --add to build one")
    return None


def resume_state(out_dir: Path, job: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """``building.json`` of an interrupted build of this exact job (its shards are kept), or a fresh one;
    the folders of an interrupted build of another job are cleared."""
    state: dict[str, Any] = {"job": job, "shards": {}}
    earlier = _read_json(out_dir / "building.json")
    if earlier is not None and earlier.get("job") == json.loads(json.dumps(job)):
        merge_rank_records(out_dir, earlier)
        print(f"resuming: {len(earlier['shards'])} shards already written", file=sys.stderr)
        return earlier
    if previous is None and any((out_dir / d).exists() for d in BUILD_FOLDERS):
        print("an interrupted build with other settings was found; starting over", file=sys.stderr)
        for folder in BUILD_FOLDERS:
            shutil.rmtree(out_dir / folder, ignore_errors=True)
    return state


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:  # a file cut short: as if absent
        return None


def metadata_part(shard_file: str) -> str:
    """Where a build on several processes keeps the metadata lines of an embeddings shard until rank 0 joins them."""
    return f"building/metadata/{Path(shard_file).stem}.jsonl"


def rank_records(out_dir: Path) -> list[Path]:
    """The shard records of each process of a build on several processes (``building/rank-<r>.json``)."""
    return sorted((out_dir / "building").glob("rank-*.json"))


def merge_rank_records(out_dir: Path, state: dict[str, Any]) -> dict[str, int]:
    """Adds to ``state`` (building.json) the shards each process recorded for the same job; the rows each
    process recorded (``{"rank-00000": rows, ...}``)."""
    rows = {}
    for path in rank_records(out_dir):
        record = _read_json(path)
        if record is not None and record.get("job") == state["job"]:
            state["shards"].update(record["shards"])
            rows[path.stem] = sum(shard["rows"] for shard in record["shards"].values())
    return rows


def check_rank_jobs(out_dir: Path, job: dict[str, Any]) -> None:
    """Refuses, before rank 0 joins anything, a build in which a process listed another gallery (or ran another
    job) than rank 0: each process records its job, with its gallery's fingerprint, as it starts embedding."""
    ours = json.loads(json.dumps(job))
    for path in rank_records(out_dir):
        theirs = (_read_json(path) or {}).get("job")
        if theirs != ours:
            rank = int(path.stem.removeprefix("rank-"))
            raise XmcoreError(
                f"{path}: process {rank} embedded another gallery than process 0 ({_job_difference(ours, theirs)}); "
                "every process must run the same command on the same data (the same --data overrides, the same "
                "files): nothing was joined; fix that and run the command again (agreeing shards are kept)")


def _job_difference(ours: dict[str, Any], theirs: dict[str, Any] | None) -> str:
    """What differs, in words: ``"9 image items, process 0 has 8"`` and the like."""
    if not isinstance(theirs, dict):
        return "its record is unreadable"
    differences = []
    for modality, mine in ours["content"].items():
        other = (theirs.get("content") or {}).get(modality)
        if not isinstance(other, dict):
            differences.append(f"no {modality} items listed")
        elif other.get("count") != mine["count"]:
            differences.append(f"{other.get('count')} {modality} items, process 0 has {mine['count']}")
        elif other.get("items") != mine["items"]:
            differences.append(f"{modality}: other items or another order")
        elif other.get("listing") != mine["listing"]:
            differences.append(f"{modality}: the same items with other metadata (split, label, owner)")
    differences += [f"another {key}" for key in ours if key != "content" and ours[key] != theirs.get(key)]
    return "; ".join(differences) or "another job"


def write_manifest(build: Build, run_dir: Path, checkpoint: Path, checkpoint_sha: str, recipe, module,
                   source: dict[str, Any], modalities: dict[str, Any]) -> dict[str, Any]:
    """manifest.json, written last: the checksum of every file, the model and how it reads each modality."""
    from xmcore import __version__

    out_dir, previous = build.out_dir, build.previous
    listed = [p for p in sorted((out_dir / "model").rglob("*")) if p.is_file() and not p.name.startswith(".")]
    listed += [out_dir / rel for entry in modalities.values()
               for rel in (entry["metadata"], *index_files(entry["index"]), *(s["file"] for s in entry["shards"]))]
    media = sorted((out_dir / "media").glob("*")) if (out_dir / "media").is_dir() else []
    # What turns a raw item into model input (a sample rate, a window, a vocabulary): the feature cache's key,
    # and what a query file is converted to before it is embedded.
    preprocessing = {m: repr(module.encoders[m].preprocessor) for m in module.modalities}
    manifest = {
        "format": FORMAT_SHARDED if any(e["index"].get("shards") for e in modalities.values()) else FORMAT,
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
        "checksums": {rel: build.checksums.get(rel) or sha256(out_dir / rel)
                      for rel in (str(p.relative_to(out_dir)) for p in listed)},
        "media_checksums": {p.name: sha256(p) for p in media},
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest
