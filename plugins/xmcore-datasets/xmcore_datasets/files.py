"""Datasets read from files in the formats the field already uses.

* ``csv`` / ``jsonl`` -- open_clip's manifest: one row per (image path, caption); rows of the same
  image are grouped into one image with several captions.  The columns set choose the pair: an
  image and a caption, an audio file and a caption, or an image and an audio file (a spoken
  caption); audio items come from the xmcore-audio plugin.
* ``karpathy`` -- the split files of Flickr8k/Flickr30k/COCO (A. Karpathy & L. Fei-Fei, "Deep
  Visual-Semantic Alignments for Generating Image Descriptions", CVPR 2015).
* ``imagefolder`` -- class sub-folders, each class turned into text through caption templates;
  relevance is by class (``read_class_folders``, which the audio plugin's ``audiofolder`` shares).

Files are opened lazily (:class:`xmcore.data.ImageFile`, ``xmcore_audio.items.AudioFile``); the
core checks every file before training and reports what it skips.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from xmcore.data import ImageFile, RetrievalData, Split, seeded_split
from xmcore.errors import XmcoreError

IMAGE_TEXT = ("image", "text")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _resolve(base: Path, path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)


def from_records(
    records: Iterable[dict[str, Any]], source: str, ratios, seed: int, modalities: tuple[str, str] = IMAGE_TEXT
) -> RetrievalData:
    """Group (owner, member[, label][, split]) records by owner -- an image and its captions -- and split
    them by their own split or by ratios.  ``modalities`` names the owners' and the members' modality."""
    make = {m: _item_maker(m) for m in modalities}
    owners: dict[Path, dict[str, Any]] = {}
    for r in records:
        label = r.get("label")
        label = None if label is None or not str(label).strip() else label  # an empty cell: no label, not a class ""
        entry = owners.setdefault(r["owner"], {"members": [], "label": label, "split": r.get("split")})
        entry["members"].append(r["member"])
    if not owners:
        raise XmcoreError(f"{source}: no rows")
    paths = list(owners)
    label_names = sorted({str(e["label"]) for e in owners.values() if e["label"] is not None})
    label_id = {name: i for i, name in enumerate(label_names)}
    has_labels = bool(label_names)

    if any(e["split"] for e in owners.values()):
        by_split: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            by_split.setdefault(owners[p]["split"] or "train", []).append(i)
        assignment = {name: np.array(idx) for name, idx in by_split.items()}
    else:
        assignment = seeded_split(len(paths), ratios, seed)

    first, second = modalities
    splits = {}
    for name, indices in assignment.items():
        chosen = [paths[i] for i in indices]
        members, owner = [], []
        for k, p in enumerate(chosen):
            members += [make[second](m) for m in owners[p]["members"]]
            owner += [k] * len(owners[p]["members"])
        labels = None
        if has_labels:
            labels = np.array([label_id.get(str(owners[p]["label"]), -1) for p in chosen])
        splits[name] = Split(modalities, {first: [make[first](p) for p in chosen], second: members}, np.array(owner), labels)
    return RetrievalData(splits, description=source, extras={"label_names": label_names})


def _item_maker(modality: str) -> Callable[[Any], Any]:
    """What a record's value becomes: a lazy file item for a path, the text itself for a caption."""
    if modality == "image":
        return ImageFile
    if modality == "audio":
        return audio_file_class()
    return lambda text: text


def audio_file_class() -> type:
    """``xmcore_audio.items.AudioFile``, from the plugin that decodes audio (not a dependency of this one)."""
    try:
        from xmcore_audio.items import AudioFile
    except ImportError:
        raise XmcoreError(
            "data.audio_column: audio files are read by the xmcore-audio plugin, which is not installed; "
            "pip install xmcore-audio (plugins/xmcore-audio in the xmcore repository)"
        ) from None
    return AudioFile


def _split_value(value: Any, source: str, row: str) -> str | None:
    if value in (None, ""):
        return None
    value = str(value).strip().lower()
    if value not in ("train", "val", "test", "restval"):
        raise XmcoreError(f"{source} {row}: split '{value}' is not one of train, val, test")
    return value


def read_csv(params, ctx) -> RetrievalData:
    path = ctx.path(params.path)
    if not path.is_file():
        raise XmcoreError(f"data.path: no such file {path}")
    source = str(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=params.separator)
        columns = reader.fieldnames or []
        wanted = list(_pair_columns(params).values()) + [c for c in (params.label_column, params.split_column) if c]
        missing = [c for c in wanted if c not in columns]
        if missing:
            sep = {"\t": "tab", ",": "comma"}.get(params.separator, repr(params.separator))
            keys = " / ".join(f"data.{key}" for key in _pair_columns(params))
            raise XmcoreError(
                f"{source}: no column {', '.join(map(repr, missing))} (separator {sep}); "
                f"columns found: {', '.join(columns) or 'none'}; set {keys} / data.separator to match the file"
            )
        records = [_record(row, params, path.parent, source, f"row {n}") for n, row in enumerate(reader, start=2)]
    return from_records(records, source, params.split_ratios, params.seed, params.modalities)


def read_jsonl(params, ctx) -> RetrievalData:
    path = ctx.path(params.path)
    if not path.is_file():
        raise XmcoreError(f"data.path: no such file {path}")
    source = str(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise XmcoreError(f"{source} line {n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise XmcoreError(f"{source} line {n}: expected a JSON object")
            missing = [c for c in _pair_columns(params).values() if c not in row]
            if missing:
                raise XmcoreError(f"{source} line {n}: no field {', '.join(map(repr, missing))}; fields: {', '.join(row)}")
            records.append(_record(row, params, path.parent, source, f"line {n}"))
    return from_records(records, source, params.split_ratios, params.seed, params.modalities)


def _pair_columns(params) -> dict[str, str]:
    """The two columns in use, by parameter name, owner first (``image_column``, ``caption_column``)."""
    keys = ("image_column", "audio_column", "caption_column")  # owner before member: image, audio, text
    return {key: getattr(params, key) for key in keys if getattr(params, key)}


def _record(row: dict, params, folder: Path, source: str, where: str) -> dict[str, Any]:
    (owner_key, owner_column), (member_key, member_column) = _pair_columns(params).items()
    member = row[member_column]
    if member_key == "caption_column":
        member = "" if member is None else str(member)
    else:
        member = _resolve(folder, str(member))
    return {
        "owner": _resolve(folder, str(row[owner_column])),
        "member": member,
        "label": row.get(params.label_column) if params.label_column else None,
        "split": _split_value(row.get(params.split_column), source, where) if params.split_column else None,
    }


def read_karpathy(params, ctx) -> RetrievalData:
    path = ctx.path(params.annotations)
    if not path.is_file():
        raise XmcoreError(f"data.annotations: no such file {path} (expected dataset_flickr30k.json or dataset_coco.json)")
    source = str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise XmcoreError(f"{source}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise XmcoreError(f"{source}: expected a Karpathy split file: an object with an 'images' list")
    root = ctx.path(params.image_root)
    records = []
    for n, image in enumerate(doc["images"]):
        try:
            filename = image["filename"]
            split = image["split"]
            sentences = image["sentences"]
        except (KeyError, TypeError) as exc:
            raise XmcoreError(f"{source}: images[{n}] has no {exc} (needs filename, split, sentences)") from None
        if split == "restval" and params.restval_to_train:
            split = "train"
        image_path = root / image.get("filepath", "") / filename
        for sentence in sentences:
            records.append({"owner": image_path, "member": sentence.get("raw", ""), "split": split})
    return from_records(records, source, None, 0)


def read_imagefolder(params, ctx) -> RetrievalData:
    return read_class_folders(params, ctx, IMAGE_SUFFIXES, "image")


def read_class_folders(params, ctx, suffixes: set[str], modality: str) -> RetrievalData:
    """ROOT/<class>/<file> or ROOT/<split>/<class>/<file>: each file (of ``suffixes``) an item of ``modality``
    with one caption per template; relevance is by class."""
    root = ctx.path(params.root)
    if not root.is_dir():
        raise XmcoreError(f"data.root: no such folder {root}")
    split_dirs = [d for d in ("train", "val", "test") if (root / d).is_dir()]
    if split_dirs:
        layout = {d: root / d for d in split_dirs}
    else:
        layout = {None: root}
    classes = sorted({c.name for folder in layout.values() for c in folder.iterdir() if c.is_dir()})
    if not classes:
        raise XmcoreError(
            f"{root}: no class sub-folders (expected ROOT/<class>/<{modality}> or ROOT/<split>/<class>/<{modality}>)"
        )
    records = []
    for split, folder in layout.items():
        for cls in sorted(c for c in folder.iterdir() if c.is_dir()):
            name = cls.name.replace("_", " ")
            for file in sorted(cls.iterdir()):
                if file.suffix.lower() in suffixes:
                    for template in params.templates:
                        records.append({"owner": file, "member": template.format(label=name), "label": cls.name, "split": split})
    data = from_records(records, str(root), params.split_ratios, params.seed, (modality, "text"))
    for split in data.splits.values():  # class-level retrieval: a caption is relevant to every item of its class
        split.relevance = "label"
    return data
