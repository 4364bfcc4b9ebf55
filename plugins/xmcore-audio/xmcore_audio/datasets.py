"""Audio datasets read from files: ``audiofolder``, ``clotho`` and ``audiocaps``.

* ``audiofolder`` -- class sub-folders of audio files, the counterpart of ``imagefolder``: each class
  becomes captions through templates; relevance is by class.
* ``clotho`` -- Clotho v2 (K. Drossos, S. Lipping & T. Virtanen, "Clotho: An Audio Captioning
  Dataset", ICASSP 2020): one captions CSV per split (``file_name``, ``caption_1`` .. ``caption_5``)
  and a folder of clips per split.  Its development / validation / evaluation splits are the
  train / val / test of DCASE 2022-2024 task 6b, language-based audio retrieval.
* ``audiocaps`` -- AudioCaps (C. D. Kim, B. Kim, H. Lee & G. Kim, "AudioCaps: Generating Captions
  for Audios in The Wild", NAACL 2019): one CSV per split (``audiocap_id``, ``youtube_id``,
  ``start_time``, ``caption``); the rows of one clip (five in val and test) share it.

Clips are lazy :class:`xmcore_audio.items.AudioFile` items: the core checks each one before training
(missing, unreadable, empty, non-finite) and skips or, with ``data.strict``, refuses the bad ones.
"""

from __future__ import annotations

import csv
import string
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

import xmcore
from xmcore.data import RetrievalData
from xmcore.errors import XmcoreError
from xmcore_datasets import ImageFolderParams

AUDIO_TEXT = ("audio", "text")
# What libsndfile (soundfile) decodes among the usual audio file types.
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au"}
SPLITS = ("train", "val", "test")


def _splits_check(splits: dict[str, str]) -> dict[str, str]:
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"keys {unknown} are not xmcore splits; use train, val, test")
    if "train" not in splits:
        raise ValueError("a 'train' split is needed")
    return splits


def _template_check(template: str, fields: tuple[str, ...]) -> str:
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = sorted(used - set(fields))
    if unknown:
        raise ValueError(f"'{template}' names {unknown}; it may name {', '.join('{' + f + '}' for f in fields)}")
    return template


class AudioFolderParams(ImageFolderParams):
    root: xmcore.RecipePath = Field(
        description="ROOT/<class>/<clip>, or ROOT/<split>/<class>/<clip> with train/val/test "
        f"({', '.join(sorted(AUDIO_SUFFIXES))} files)"
    )
    templates: list[str] = Field(["the sound of a {label}"], min_length=1, description="caption templates; {label} is the class")


class ClothoParams(xmcore.Params):
    root: xmcore.RecipePath = Field(description="the Clotho folder: its captions CSVs and a folder of clips per split")
    splits: dict[str, str] = Field(
        {"train": "development", "val": "validation", "test": "evaluation"},
        description="xmcore split -> Clotho split (DCASE task 6b: development / validation / evaluation)",
    )
    captions: str = Field(
        "clotho_captions_{split}.csv", description="each split's captions CSV, in root; {split} is Clotho's split name"
    )
    audio: str = Field("{split}", description="each split's folder of clips, in root; {split} is Clotho's split name")

    _splits = field_validator("splits")(classmethod(lambda cls, v: _splits_check(v)))
    _templates = field_validator("captions", "audio")(classmethod(lambda cls, v: _template_check(v, ("split",))))


AUDIOCAPS_FIELDS = ("audiocap_id", "youtube_id", "start_time")


class AudioCapsParams(xmcore.Params):
    root: xmcore.RecipePath = Field(description="the AudioCaps folder: its CSVs and the downloaded clips")
    splits: dict[str, str] = Field(
        {"train": "train", "val": "val", "test": "test"}, description="xmcore split -> AudioCaps split (its CSV's name)"
    )
    captions: str = Field("{split}.csv", description="each split's CSV, in root; {split} is the AudioCaps split")
    audio: str = Field("{split}", description="each split's folder of clips, in root; {split} is the AudioCaps split")
    file_name: str = Field(
        "{youtube_id}.wav",
        description="a clip's file in its folder, from its CSV row's {youtube_id}, {audiocap_id} or {start_time} "
        "(e.g. Y{youtube_id}.wav, {youtube_id}_{start_time}.flac); clips are used as downloaded (already cut "
        "at start_time)",
    )

    _splits = field_validator("splits")(classmethod(lambda cls, v: _splits_check(v)))
    _templates = field_validator("captions", "audio")(classmethod(lambda cls, v: _template_check(v, ("split",))))
    _file_name = field_validator("file_name")(classmethod(lambda cls, v: _template_check(v, AUDIOCAPS_FIELDS)))


def build_audiofolder(params: AudioFolderParams, ctx: xmcore.BuildContext):
    """Class sub-folders of audio files; classes become captions through templates; relevance is by class."""
    from xmcore_datasets.files import read_class_folders

    return read_class_folders(params, ctx, AUDIO_SUFFIXES, "audio")


def build_clotho(params: ClothoParams, ctx: xmcore.BuildContext):
    """Clotho v2: five captions per clip, a captions CSV and a folder of clips per split (DCASE task 6b)."""
    root = _root(params, ctx, "clotho_captions_development.csv and development/")
    records = []
    for split, name in params.splits.items():
        path, folder = root / params.captions.format(split=name), root / params.audio.format(split=name)
        rows, columns = _read_rows(path, split, name, ["file_name"])
        caption_columns = sorted((c for c in columns if c.startswith("caption_")), key=lambda c: (len(c), c))
        if not caption_columns:
            raise XmcoreError(f"{path}: no caption_1 .. caption_5 columns; columns found: {', '.join(columns)}")
        for row in rows:
            records += [{"owner": folder / row["file_name"], "member": row[c] or "", "split": split} for c in caption_columns]
    return _records_data(records, str(root), root)


def build_audiocaps(params: AudioCapsParams, ctx: xmcore.BuildContext):
    """AudioCaps: a CSV per split (audiocap_id, youtube_id, start_time, caption); a clip's rows share it."""
    root = _root(params, ctx, "train.csv and train/")
    records = []
    for split, name in params.splits.items():
        path, folder = root / params.captions.format(split=name), root / params.audio.format(split=name)
        rows, _ = _read_rows(path, split, name, [*AUDIOCAPS_FIELDS, "caption"])
        for row in rows:
            file_name = params.file_name.format(**{f: (row[f] or "").strip() for f in AUDIOCAPS_FIELDS})
            records.append({"owner": folder / file_name, "member": row["caption"] or "", "split": split})
    return _records_data(records, str(root), root)


def _root(params, ctx: xmcore.BuildContext, expected: str) -> Path:
    root = ctx.path(params.root)
    if not root.is_dir():
        raise XmcoreError(f"data.root: no such folder {root} (expected the dataset's folder, holding e.g. {expected})")
    return root


def _read_rows(path: Path, split: str, name: str, needed: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """A split's CSV rows (comma-separated, UTF-8, quoted fields as the datasets ship them) and its columns."""
    if not path.is_file():
        raise XmcoreError(
            f"{path}: no such file, for split '{split}' ('{name}'); put the dataset's CSV there, set data.captions "
            f"to its name, or leave '{split}' out of data.splits"
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            missing = [c for c in needed if c not in columns]
            if missing:
                raise XmcoreError(
                    f"{path}: no column {', '.join(map(repr, missing))}; columns found: {', '.join(columns) or 'none'}"
                )
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise XmcoreError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if not rows:
        raise XmcoreError(f"{path}: no rows")
    return rows, columns


def _records_data(records: list[dict[str, Any]], source: str, root: Path) -> RetrievalData:
    """The records as data; ``root``, the dataset's folder, is the one no symbolic link may lead a clip out of."""
    from xmcore_datasets.files import from_records

    return from_records(records, source, None, 0, AUDIO_TEXT, root)


@xmcore.hookimpl
def xmcore_register_datasets(register):
    # These read the user's files: the tests write small trees in each real layout (tests/test_audio_datasets.py).
    register("audiofolder", build_audiofolder, params=AudioFolderParams, modalities=AUDIO_TEXT, test_params=lambda: None)
    register("clotho", build_clotho, params=ClothoParams, modalities=AUDIO_TEXT, test_params=lambda: None)
    register("audiocaps", build_audiocaps, params=AudioCapsParams, modalities=AUDIO_TEXT, test_params=lambda: None)
