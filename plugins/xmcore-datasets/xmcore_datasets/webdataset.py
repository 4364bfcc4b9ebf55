"""``webdataset``: tar shards of samples (``KEY.jpg``/``KEY.png`` + ``KEY.txt``, optional ``KEY.cls`` /
``KEY.json``), the format of webdataset and img2dataset, for data that does not fit a folder.

Each shard is indexed once (member headers and the small text members); images stay in the tar and
are read by offset in the DataLoader workers, so nothing is unpacked to disk.  Shard lists use
brace patterns (``train-{000000..000099}.tar``).  Shards must be uncompressed ``.tar`` files, as
webdataset writes them: compressed tars cannot be read by offset.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from braceexpand import braceexpand

from xmcore.data import LazyItem, RetrievalData, Split, image_problem, seeded_split
from xmcore.errors import XmcoreError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class TarImage(LazyItem):
    shard: Path
    offset: int
    size: int
    name: str

    def load(self):
        from xmcore.media import open_image

        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        return open_image(io.BytesIO(data))

    def check(self) -> str | None:
        return image_problem(self.load)

    def fingerprint(self) -> str:
        st = self.shard.stat()
        return f"{self.shard}:{st.st_size}:{st.st_mtime_ns}:{self.offset}:{self.size}"

    def __str__(self) -> str:
        return f"{self.shard}:{self.name}"


def expand(pattern: str, ctx) -> list[Path]:
    shards = [ctx.path(p) for p in braceexpand(pattern)]
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise XmcoreError(f"webdataset: {len(missing)} shard(s) of '{pattern}' do not exist, e.g. {missing[0]}")
    return shards


def index_shard(shard: Path) -> list[dict]:
    """Samples of one shard: image member location, caption, label."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                stem, _, ext = base.partition(".")
                key = member.name[: len(member.name) - len(base)] + stem
                sample = samples.setdefault(key, {"key": key})
                if _unsafe(member.name):  # nothing is extracted, but such a name is a hostile or broken tar
                    sample.setdefault("unsafe", member.name)
                ext = ext.lower()
                if ext in IMAGE_EXTENSIONS:
                    sample["image"] = TarImage(shard, member.offset_data, member.size, member.name)
                elif ext in ("txt", "cls", "json"):
                    sample[ext] = tar.extractfile(member).read().decode("utf-8", errors="replace")
    except tarfile.TarError as exc:  # ReadError, a truncated or corrupt header
        raise XmcoreError(f"webdataset: {shard} is not an uncompressed tar shard ({exc})") from None
    out = []
    for s in samples.values():
        caption = s.get("txt")
        if caption is None and "json" in s:
            try:
                meta = json.loads(s["json"])
                caption = meta.get("caption") or meta.get("text") if isinstance(meta, dict) else None
            except json.JSONDecodeError:
                caption = None
            caption = caption if isinstance(caption, str) else None  # a number or list there: no caption
        image = s.get("image") or MissingImage(f"{shard}:{s['key']}")
        if "unsafe" in s:
            image = MissingImage(f"{shard}:{s['unsafe']}", "unsafe member name (absolute, or with '..': webdataset "
                                 "names members KEY.ext; rewrite the shard)")
        out.append({"key": s["key"], "image": image, "caption": (caption or "").strip(),
                    "label": s.get("cls", "").strip() or None})
    return out


def _unsafe(name: str) -> bool:
    """A member name that would be written outside the folder a tar is unpacked into."""
    return name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/")


def _split(samples: list[dict], label_id: dict[str, int]) -> Split:
    images, texts, labels = [], [], []
    for s in samples:
        images.append(s["image"])
        texts.append(s["caption"])
        labels.append(label_id.get(s["label"], -1))
    return Split(("image", "text"), {"image": images, "text": texts}, np.arange(len(samples)),
                 np.array(labels) if label_id else None)


@dataclass(frozen=True)
class MissingImage(LazyItem):
    """A record that has text but no image (a tar sample without an image member, a table row with an
    empty image cell): reported as a bad item with ``reason``."""

    where: str
    reason: str = "sample without image"

    def load(self):
        raise FileNotFoundError(f"{self.reason}: {self.where}")

    def check(self) -> str | None:
        return self.reason

    def __str__(self) -> str:
        return self.where


def read_webdataset(params, ctx) -> RetrievalData:
    patterns = {"train": params.train, "val": params.val, "test": params.test}
    samples = {}
    if params.shards:
        everything = [s for shard in expand(params.shards, ctx) for s in index_shard(shard)]
        parts = seeded_split(len(everything), params.split_ratios, params.seed)
        samples = {name: [everything[i] for i in idx] for name, idx in parts.items()}
        source = params.shards
    else:
        for name, pattern in patterns.items():
            if pattern:
                samples[name] = [s for shard in expand(pattern, ctx) for s in index_shard(shard)]
        source = ", ".join(p for p in patterns.values() if p)
    labels = sorted({s["label"] for part in samples.values() for s in part if s["label"] is not None})
    label_id = {name: i for i, name in enumerate(labels)}
    splits = {name: _split(part, label_id) for name, part in samples.items() if part}
    if not splits:
        raise XmcoreError(f"webdataset: no samples in {source}")
    return RetrievalData(splits, description=f"webdataset {source}", extras={"label_names": labels})
