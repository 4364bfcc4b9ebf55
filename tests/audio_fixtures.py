"""Small audio datasets on disk in their real layouts (Clotho, AudioCaps, class folders, manifests), written
with soundfile; each can hold the bad clips of ``test_audio.write_bad_audio`` beside the good ones."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import soundfile

from test_audio import tone, write_bad_audio

RATE = 8000
SPLITS = {"development": 8, "validation": 2, "evaluation": 4}  # Clotho's split names, tiny


def write_clip(path: Path, index: int, seconds: float = 0.3, rate: int = RATE) -> Path:
    """A clip whose pitch tells it from its neighbours; WAV or FLAC by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone(seconds, rate, hz=200.0 + 90.0 * index), rate)
    return path


def add_bad_clips(folder: Path) -> list[str]:
    """The bad clips in ``folder`` (a missing one named only); their file names."""
    return list(write_bad_audio(folder))


def write_clotho(root: Path, counts: dict[str, int] = SPLITS, bad: bool = False) -> Path:
    """Clotho v2's layout: clotho_captions_<split>.csv (file_name, caption_1..caption_5) and <split>/ of clips.
    File names hold spaces and commas, quoted in the CSV as Clotho's are."""
    n = 0
    for split, count in counts.items():
        names = []
        for _ in range(count):
            names.append(f"clip {n}, field recording.wav")
            write_clip(root / split / names[-1], n)
            n += 1
        if bad and split == "development":
            names += add_bad_clips(root / split)
        with open(root / f"clotho_captions_{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
            for name in names:
                writer.writerow([name] + [f"caption {k} of {name}" for k in range(1, 6)])
    return root


def write_audiocaps(root: Path, counts: dict[str, int] | None = None, bad: bool = False) -> Path:
    """AudioCaps' layout: <split>.csv (audiocap_id, youtube_id, start_time, caption) and <split>/<youtube_id>.wav;
    one caption per training clip, five per val/test clip (rows of their own, as in AudioCaps)."""
    counts = counts or {"train": 8, "val": 2, "test": 3}
    cap_id, n = 1000, 0
    for split, count in counts.items():
        rows = []
        for _ in range(count):
            youtube_id = f"yt{n:03d}_-x"  # YouTube ids hold '-' and '_'
            write_clip(root / split / f"{youtube_id}.wav", n)
            for k in range(1 if split == "train" else 5):
                rows.append([cap_id, youtube_id, 30, f"caption {k} of clip {n}"])
                cap_id += 1
            n += 1
        if bad and split == "train":
            for name in add_bad_clips(root / split):
                rows.append([cap_id, Path(name).stem, 0, f"a caption of {name}"])
                cap_id += 1
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
            writer.writerows(rows)
    return root


def write_audiofolder(root: Path, classes=("dog_bark", "rain"), per_class: int = 2, bad: bool = False) -> Path:
    """ROOT/<split>/<class>/<clip>.flac; with ``bad``, the bad clips in train's first class, the missing one
    a dangling link (what a folder listing shows of a file that is gone)."""
    n = 0
    for split in ("train", "val", "test"):
        for cls in classes:
            for i in range(per_class):
                write_clip(root / split / cls / f"{i}.flac", n)
                n += 1
    if bad:
        folder = root / "train" / classes[0]
        for name in add_bad_clips(folder):
            if not (folder / name).exists():
                (folder / name).symlink_to(folder / "gone.wav")
    return root


def write_audio_manifest(root: Path, pair: str = "audio-text", bad: bool = False, fmt: str = "csv") -> Path:
    """A manifest in open_clip's shape with an audio column: clip and caption (``audio-text``) or picture
    and spoken caption (``image-audio``); tab-separated csv, or jsonl.  Splits by a ``split`` column."""
    from conftest import write_image

    rows = []
    for n in range(10):
        split = "train" if n < 6 else "test"
        clip = f"clips/{n}.wav"
        write_clip(root / clip, n)
        if pair == "audio-text":
            rows += [{"audio": clip, "caption": f"caption {k} of clip {n}", "split": split} for k in range(2)]
        else:
            picture = f"pictures/{n}.png"
            write_image(root / picture, ("red", "green", "blue", "yellow")[n % 4])
            second = f"clips/{n}b.wav"
            write_clip(root / second, n + 20)
            rows += [{"filepath": picture, "audio": c, "split": split} for c in (clip, second)]
    if bad:
        for name in add_bad_clips(root / "clips"):
            clip = f"clips/{name}"
            if pair == "audio-text":
                rows.append({"audio": clip, "caption": f"a caption of {name}", "split": "train"})
            else:
                rows.append({"filepath": "pictures/0.png", "audio": clip, "split": "train"})
    if fmt == "jsonl":
        path = root / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    path = root / "data.tsv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path
