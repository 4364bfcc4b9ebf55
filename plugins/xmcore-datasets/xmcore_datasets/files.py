"""Datasets read from files in the formats the field already uses.

* ``csv`` / ``jsonl`` -- open_clip's manifest: one row per (image path, caption); rows of the same
  image are grouped into one image with several captions.
* ``karpathy`` -- the split files of Flickr8k/Flickr30k/COCO (A. Karpathy & L. Fei-Fei, "Deep
  Visual-Semantic Alignments for Generating Image Descriptions", CVPR 2015).
* ``imagefolder`` -- class sub-folders, each class turned into text through caption templates;
  relevance is by class.

Images are opened lazily (:class:`xmcore.data.ImageFile`); the core checks every file before
training and reports what it skips.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from xmcore.data import ImageFile, RetrievalData, Split, seeded_split
from xmcore.errors import XmcoreError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _resolve(base: Path, path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)


def from_records(records: Iterable[dict[str, Any]], source: str, ratios, seed: int) -> RetrievalData:
    """Group (image, caption[, label][, split]) records by image; split them by their own split or by ratios."""
    images: dict[Path, dict[str, Any]] = {}
    for r in records:
        entry = images.setdefault(r["image"], {"captions": [], "label": r.get("label"), "split": r.get("split")})
        entry["captions"].append(r["caption"])
    if not images:
        raise XmcoreError(f"{source}: no rows")
    paths = list(images)
    label_names = sorted({str(e["label"]) for e in images.values() if e["label"] is not None})
    label_id = {name: i for i, name in enumerate(label_names)}
    has_labels = bool(label_names)

    if any(e["split"] for e in images.values()):
        by_split: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            by_split.setdefault(images[p]["split"] or "train", []).append(i)
        assignment = {name: np.array(idx) for name, idx in by_split.items()}
    else:
        assignment = seeded_split(len(paths), ratios, seed)

    splits = {}
    for name, indices in assignment.items():
        chosen = [paths[i] for i in indices]
        texts, owner = [], []
        for k, p in enumerate(chosen):
            texts += images[p]["captions"]
            owner += [k] * len(images[p]["captions"])
        labels = None
        if has_labels:
            labels = np.array([label_id.get(str(images[p]["label"]), -1) for p in chosen])
        splits[name] = Split(("image", "text"), {"image": [ImageFile(p) for p in chosen], "text": texts}, np.array(owner), labels)
    return RetrievalData(splits, description=source, extras={"label_names": label_names})


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
        wanted = [params.image_column, params.caption_column] + [
            c for c in (params.label_column, params.split_column) if c
        ]
        missing = [c for c in wanted if c not in columns]
        if missing:
            sep = {"\t": "tab", ",": "comma"}.get(params.separator, repr(params.separator))
            raise XmcoreError(
                f"{source}: no column {', '.join(map(repr, missing))} (separator {sep}); "
                f"columns found: {', '.join(columns) or 'none'}; set data.image_column / data.caption_column "
                "/ data.separator to match the file"
            )
        records = [_record(row, params, path.parent, source, f"row {n}") for n, row in enumerate(reader, start=2)]
    return from_records(records, source, params.split_ratios, params.seed)


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
            missing = [c for c in (params.image_column, params.caption_column) if c not in row]
            if missing:
                raise XmcoreError(f"{source} line {n}: no field {', '.join(map(repr, missing))}; fields: {', '.join(row)}")
            records.append(_record(row, params, path.parent, source, f"line {n}"))
    return from_records(records, source, params.split_ratios, params.seed)


def _record(row: dict, params, folder: Path, source: str, where: str) -> dict[str, Any]:
    caption = row[params.caption_column]
    return {
        "image": _resolve(folder, str(row[params.image_column])),
        "caption": "" if caption is None else str(caption),
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
            records.append({"image": image_path, "caption": sentence.get("raw", ""), "split": split})
    return from_records(records, source, None, 0)


def read_imagefolder(params, ctx) -> RetrievalData:
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
        raise XmcoreError(f"{root}: no class sub-folders (expected ROOT/<class>/<image> or ROOT/<split>/<class>/<image>)")
    records = []
    for split, folder in layout.items():
        for cls in sorted(c for c in folder.iterdir() if c.is_dir()):
            name = cls.name.replace("_", " ")
            for file in sorted(cls.iterdir()):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    for template in params.templates:
                        records.append({"image": file, "caption": template.format(label=name), "label": cls.name, "split": split})
    data = from_records(records, str(root), params.split_ratios, params.seed)
    for split in data.splits.values():  # class-level retrieval: a caption is relevant to every image of its class
        split.relevance = "label"
    return data
