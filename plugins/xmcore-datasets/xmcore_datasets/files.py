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
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

import numpy as np

from xmcore.data import ImageFile, LazyItem, RetrievalData, Split, seeded_split
from xmcore.errors import XmcoreError
from xmcore_datasets.webdataset import MissingImage

IMAGE_TEXT = ("image", "text")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _resolve(base: Path, path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)


def from_records(
    records: Iterable[dict[str, Any]], source: str, ratios, seed: int, modalities: tuple[str, str] = IMAGE_TEXT,
    root: Path | None = None,
) -> RetrievalData:
    """Group (owner, member[, label][, split]) records by owner -- an image and its captions -- and split
    them by their own split or by ratios.  ``modalities`` names the owners' and the members' modality;
    ``root`` is the data folder that no symbolic link may lead an image out of."""
    make = {m: _item_maker(m, root) for m in modalities}
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


def _item_maker(modality: str, root: Path | None = None) -> Callable[[Any], Any]:
    """What a record's value becomes: a lazy file item for a path, the text itself for a caption; an item
    already (a row without a file) stays what it is."""
    if modality == "image":
        make = lambda path: ImageFile(path, root)  # noqa: E731
    elif modality == "audio":
        audio_file = audio_file_class()
        make = lambda path: audio_file(path, root)  # noqa: E731
    else:
        return lambda text: text
    return lambda value: value if isinstance(value, LazyItem) else make(value)


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
    with _text_file(path, newline="") as f:
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
    return from_records(records, source, params.split_ratios, params.seed, params.modalities, path.parent)


def read_jsonl(params, ctx) -> RetrievalData:
    path = ctx.path(params.path)
    if not path.is_file():
        raise XmcoreError(f"data.path: no such file {path}")
    source = str(path)
    records = []
    with _text_file(path) as f:
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
    return from_records(records, source, params.split_ratios, params.seed, params.modalities, path.parent)


def _pair_columns(params) -> dict[str, str]:
    """The two columns in use, by parameter name, owner first (``image_column``, ``caption_column``)."""
    keys = ("image_column", "audio_column", "caption_column")  # owner before member: image, audio, text
    return {key: getattr(params, key) for key in keys if getattr(params, key)}


def _record(row: dict, params, folder: Path, source: str, where: str) -> dict[str, Any]:
    """One manifest row as a record.  A caption that is not text (a number or list in JSON) is kept as it is,
    for the data check to report; a row without a usable path gets an item that reports itself."""
    (owner_key, owner_column), (member_key, member_column) = _pair_columns(params).items()
    member = row[member_column]
    if member_key == "caption_column":
        member = "" if member is None else member
    else:
        member = _file(folder, member, member_column, f"{source} {where}")
    return {
        "owner": _file(folder, row[owner_column], owner_column, f"{source} {where}"),
        "member": member,
        "label": row.get(params.label_column) if params.label_column else None,
        "split": _split_value(row.get(params.split_column), source, where) if params.split_column else None,
    }


def _file(folder: Path, value: Any, column: str, where: str) -> Any:
    """A manifest cell's path, resolved against the manifest's folder; a missing, empty or non-text cell (a short
    CSV row, a JSON number) is an item that reports why it cannot be used."""
    if isinstance(value, str) and value.strip():
        return _resolve(folder, value)
    if value is None or value == "":
        return MissingImage(where, f"no path in column '{column}' (a short or empty row)")
    return MissingImage(where, f"column '{column}' holds {type(value).__name__}, not a path")


@contextmanager
def _text_file(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """``path`` opened as UTF-8 text (a byte-order mark at its start is skipped, as spreadsheets write one);
    bytes that are not UTF-8 are an error naming the line."""
    with open(path, encoding="utf-8-sig", newline=newline) as f:
        try:
            yield f
        except UnicodeDecodeError as exc:
            raise XmcoreError(f"{path}: {_undecodable(path)} is not UTF-8 text ({exc.reason}: byte "
                              f"0x{exc.object[exc.start]:02x}); save the file as UTF-8") from None


def _undecodable(path: Path) -> str:
    """Which line of a file is not UTF-8 (or 'the file', if none alone fails)."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return f"line {n}"
    return "the file"


def read_karpathy(params, ctx) -> RetrievalData:
    path = ctx.path(params.annotations)
    if not path.is_file():
        raise XmcoreError(f"data.annotations: no such file {path} (expected dataset_flickr30k.json or dataset_coco.json)")
    source = str(path)
    with _text_file(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as exc:
            raise XmcoreError(f"{source}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise XmcoreError(f"{source}: expected a Karpathy split file: an object with an 'images' list")
    root = ctx.path(params.image_root)
    records = []
    for n, image in enumerate(doc["images"]):
        filename, split, sentences = _karpathy_image(image, f"{source}: images[{n}]")
        if split == "restval" and params.restval_to_train:
            split = "train"
        image_path = root / image.get("filepath", "") / filename
        if not Path(os.path.normpath(image_path)).is_relative_to(os.path.normpath(root)):
            image_path = MissingImage(f"{source}: images[{n}]", f"filepath/filename lead outside data.image_root {root}")
        for sentence in sentences:
            records.append({"owner": image_path, "member": sentence.get("raw", ""), "split": split})
    return from_records(records, source, None, 0, root=root)


def _karpathy_image(image: Any, where: str) -> tuple[str, str, list[dict]]:
    """An entry of a Karpathy file's images: its filename, split and sentences, or an error saying which is wrong."""
    expected = ("an object with filename (text), split (train, val, test or restval), sentences (a list of objects "
                "with 'raw' text) and optionally filepath (text)")
    if not isinstance(image, dict):
        raise XmcoreError(f"{where} is {type(image).__name__}; expected {expected}")
    missing = [key for key in ("filename", "split", "sentences") if key not in image]
    if missing:
        raise XmcoreError(f"{where} has no {', '.join(map(repr, missing))}; expected {expected}")
    wrong = [f"{key} is {type(image[key]).__name__}" for key in ("filename", "filepath")
             if key in image and not isinstance(image[key], str)]
    if image["split"] not in ("train", "val", "test", "restval"):
        wrong.append(f"split is {image['split']!r}")
    if not isinstance(image["sentences"], list) or not all(isinstance(x, dict) for x in image["sentences"]):
        wrong.append("sentences is not a list of objects")
    if wrong:
        raise XmcoreError(f"{where}: {'; '.join(wrong)}; expected {expected}; fix the file (or regenerate it)")
    return image["filename"], image["split"], image["sentences"]


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
    data = from_records(records, str(root), params.split_ratios, params.seed, (modality, "text"), root)
    for split in data.splits.values():  # class-level retrieval: a caption is relevant to every item of its class
        split.relevance = "label"
    return data
