"""``xmcore index``: a trained run's gallery embedded into an index folder (see :mod:`xmcore.search.folder`).

The phases, one function each: check the command against the folder (:func:`_check_command`); rebuild the
trained model and list the gallery (:func:`_gallery`); per modality, embed shards (resumable), write metadata
and the FAISS index; store the model and write the manifest last (:func:`_finish`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xmcore.errors import XmcoreError
from xmcore.io import file_sha256 as sha256
from xmcore.search.faiss_index import IndexOptions, check_kind, new_faiss_index, read_faiss, train_sample, write_faiss
from xmcore.search.folder import Build, metadata_part, previous_index, resume_state, write_manifest
from xmcore.search.ivf import layered, write_index_parts
from xmcore.search.gallery import (GalleryItem, embed_shards, gallery_fingerprint, gallery_items, metadata_lines, shard_plan,
                                   write_metadata)
from xmcore.search.query import export_model


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
) -> dict[str, Any] | None:
    """Embed a gallery with a run's best checkpoint and write (or extend, with ``add``) an index folder;
    returns its manifest (``None`` in a process other than rank 0 of a build on several processes).

    ``trainer.*`` overrides embed with Lightning's predict, on the processes they ask for
    (:mod:`xmcore.search.predict`); without them, this process embeds in a plain loop."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    overrides, trainer_overrides = split_overrides(overrides)
    checkpoint, checkpoint_sha, previous, options = _check_command(run_dir, out_dir, options or IndexOptions(), add)
    trainer_args = _trainer_arguments(run_dir, trainer_overrides, plugins)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe, module, data = _trained_model(run_dir, checkpoint, overrides, plugins)
    splits = list(splits or data.splits)
    modalities = list(modalities or (previous["modalities"] if previous else data.modalities))
    gallery = _gallery(data, splits, modalities, previous)
    job = _job(checkpoint_sha, recipe, splits, modalities, shard_size, previous, gallery)
    # Files an --add rewrites get the next generation's name; the manifest switches to them last, so an
    # interrupted --add leaves the index it started from intact (and a rerun starts from that again).
    generation = previous.get("generation", 0) + 1 if previous else 0
    build = Build(out_dir, previous, options, {}, f".g{generation}" if generation else "")
    batch_size = batch_size or recipe.eval.batch_size
    if trainer_args is None:
        build.state = resume_state(out_dir, job, previous)
        entries = _embed_here(build, gallery, module, shard_size, batch_size, recipe.data.num_workers)
    else:
        from xmcore.search.predict import embed_with_trainer

        if not embed_with_trainer(build, job, gallery, module, trainer_args, shard_size, batch_size, recipe.data.num_workers):
            return None  # another process: its shards are written, rank 0 finishes
        entries = _assemble(build, gallery, shard_size)
    source = {"splits": splits, "overrides": list(overrides)}
    return _finish(build, run_dir, checkpoint, checkpoint_sha, recipe, module, source, entries)


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(data overrides, trainer.* overrides)``: the latter say how to embed, not what, so they stay out of
    the recipe the index stores, of its manifest and of the job a rerun resumes (on any number of processes)."""
    trainer = [o for o in overrides if o.partition("=")[0].strip().startswith("trainer.")]
    return [o for o in overrides if o not in trainer], trainer


def _trainer_arguments(run_dir: Path, trainer_overrides: list[str], plugins) -> dict[str, Any] | None:
    if not trainer_overrides:
        return None
    from xmcore.search.predict import trainer_arguments

    return trainer_arguments(run_dir, trainer_overrides, plugins)


def _embed_here(build: Build, gallery: dict[str, list[GalleryItem]], module, shard_size: int, batch_size: int,
                num_workers: int) -> dict[str, Any]:
    """Each modality embedded in this process, its metadata and FAISS index written: the manifest's entries."""
    entries = dict(build.previous["modalities"]) if build.previous else {}
    for modality, items in gallery.items():
        shards = embed_shards(build, module, modality, items, shard_size, batch_size, num_workers)
        metadata, media_types = write_metadata(build, modality, *metadata_lines(build, modality, items))
        entries[modality] = {**write_modality_index(build, modality, shards, len(items)), "metadata": metadata,
                             "media_types": media_types}
    return entries


def _assemble(build: Build, gallery: dict[str, list[GalleryItem]], shard_size: int) -> dict[str, Any]:
    """The same from the shards and metadata parts that every process wrote (rank 0, once all are done)."""
    entries = dict(build.previous["modalities"]) if build.previous else {}
    for modality, items in gallery.items():
        before = build.before(modality)
        shards = list(before["shards"]) if before else []
        parts, media_types = [], set()
        for name, _, _ in shard_plan(build, modality, len(items), shard_size):
            record = build.state["shards"][name]
            shards.append({"file": name, "rows": record["rows"]})
            parts.append(build.out_dir / metadata_part(name))
            media_types.update(record["media_types"])
        metadata, media_types = write_metadata(build, modality, parts, media_types)
        entries[modality] = {**write_modality_index(build, modality, shards, len(items)), "metadata": metadata,
                             "media_types": media_types}
    return entries


def _check_command(run_dir: Path, out_dir: Path, options: IndexOptions, add: bool):
    """The checkpoint, its checksum, the index an --add extends and the index options (an --add's are the
    index's own), once the command is known to fit the folders it names."""
    from xmcore.run import best_checkpoint

    check_kind(options.kind)
    if not (run_dir / "recipe.yaml").is_file():
        raise XmcoreError(f"{run_dir}: no recipe.yaml; expected a run directory written by `xmcore run`")
    checkpoint = best_checkpoint(run_dir)
    checkpoint_sha = sha256(checkpoint)
    previous = previous_index(out_dir, checkpoint_sha, add)
    if previous:
        options = IndexOptions.from_manifest(next(iter(previous["modalities"].values()))["index"])
    return checkpoint, checkpoint_sha, previous, options


def _trained_model(run_dir: Path, checkpoint: Path, overrides: Sequence[str], plugins):
    """The run's recipe (``overrides`` applied), its module with the checkpoint's weights (in eval mode) and
    its data."""
    from xmcore.run import rebuild_trained

    recipe, built, module, _ = rebuild_trained(run_dir, checkpoint, overrides, plugins, None, "--data")
    module.eval()
    return recipe, module, built.data


def _gallery(data, splits: list[str], modalities: list[str], previous) -> dict[str, list[GalleryItem]]:
    if previous is not None and set(modalities) - set(previous["modalities"]):
        raise XmcoreError(f"--add: the index holds {', '.join(previous['modalities'])} only")
    gallery = gallery_items(data, splits, modalities)
    if not any(gallery.values()) or (previous is None and not all(gallery.values())):
        empty = [m for m in modalities if not gallery[m]]
        raise XmcoreError(f"the gallery has no {', '.join(empty)} items in the splits {', '.join(splits)}")
    return gallery


def _job(checkpoint_sha: str, recipe, splits, modalities, shard_size: int, previous, gallery) -> dict[str, Any]:
    """What a resumed build must share with the interrupted one: this exact command and this exact content."""
    return {
        "checkpoint_sha256": checkpoint_sha,
        "recipe": recipe.resolved(),
        "splits": splits,
        "modalities": modalities,
        "shard_size": shard_size,
        "add_to": previous["checksums"] if previous else None,
        "content": {m: gallery_fingerprint(v) for m, v in gallery.items()},
    }


def write_modality_index(build: Build, modality: str, shards: list[dict[str, Any]], added: int) -> dict[str, Any]:
    """The modality's FAISS index (the earlier one with this build's vectors added) and its manifest entry."""
    before = build.before(modality)
    if layered(build.options) or (before and before["index"].get("shards")):
        return write_index_parts(build, modality, shards, added)
    first_shard = len(before["shards"]) if before else 0
    vectors = np.concatenate([np.load(build.out_dir / s["file"]) for s in shards[first_shard:]]) if added else None
    dim = int(vectors.shape[1]) if vectors is not None and len(vectors) else int(before["dim"])
    options = build.options
    if before:
        index = read_faiss(build.out_dir / before["index"]["file"])
        if index.ntotal != before["count"]:
            raise XmcoreError(f"{build.out_dir / before['index']['file']}: holds {index.ntotal} vectors, the manifest "
                              f"says {before['count']}; the index was changed by hand: rebuild it")
    else:
        index = new_faiss_index(dim, options, train_sample(vectors, options) if options.kind == "ivfpq" else None)
    if vectors is not None and len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    index_rel = f"faiss/{modality}{build.suffix}.index"
    (build.out_dir / "faiss").mkdir(exist_ok=True)
    write_faiss(build.out_dir / index_rel, index)
    return {
        "count": (before["count"] if before else 0) + added,
        "dim": dim,
        "shards": shards,
        "index": {"file": index_rel, "type": options.kind, "params": options.params(), "ntotal": int(index.ntotal)},
    }


def _finish(build: Build, run_dir: Path, checkpoint: Path, checkpoint_sha: str, recipe, module,
            source: dict[str, Any], entries: dict[str, Any]) -> dict[str, Any]:
    """The stored model (a new index only), the manifest, and no more ``building.json`` nor files of the
    generation an --add replaced."""
    out_dir, previous = build.out_dir, build.previous
    if previous is None:
        export_model(module, recipe, out_dir / "model")
    manifest = write_manifest(build, run_dir, checkpoint, checkpoint_sha, recipe, module, source, entries)
    (out_dir / "building.json").unlink(missing_ok=True)
    shutil.rmtree(out_dir / "building", ignore_errors=True)
    if previous:  # the files of the generation before, now that nothing points at them
        for modality in entries:
            for rel in (previous["modalities"][modality]["metadata"], previous["modalities"][modality]["index"]["file"]):
                if rel not in (entries[modality]["metadata"], entries[modality]["index"]["file"]):
                    (out_dir / rel).unlink(missing_ok=True)
    return manifest
