"""Labelled image-text benchmarks of the class-level protocol (relevance by class, read with mAP), from the
files as they are distributed.

* ``wikipedia`` -- N. Rasiwasia et al., "A New Approach to Cross-Modal Multimedia Retrieval", ACM MM 2010:
  2,866 sections of Wikipedia featured articles, each one image and its text, in 10 categories.  The
  archive (wikipedia_dataset/) holds ``trainset_txt_img_cat.list`` (2,173 lines) and
  ``testset_txt_img_cat.list`` (693), each line ``text_id<TAB>image_id<TAB>category`` (1-10),
  ``texts/<text_id>.xml`` (the section in ``<text>...</text>``) and ``images/<category>/<image_id>.jpg``.
* ``pascal-sentences`` -- C. Rashtchian et al., "Collecting Image Annotations Using Amazon's Mechanical
  Turk", NAACL-HLT 2010 workshop: 1,000 PASCAL VOC images, 50 in each of 20 categories, 5 sentences
  each, as the usual downloaders write them: ``dataset/<category>/<image>.jpg`` and
  ``sentence/<category>/<image>.txt``, one sentence a line.

The splits follow DSCMR (L. Zhen et al., "Deep Supervised Cross-Modal Retrieval", CVPR 2019), whose
numbers are the usual comparison: Wikipedia 2,173 / 231 / 462 (validation drawn from the 693 test
pairs), Pascal Sentence 800 / 100 / 100 (40 / 5 / 5 images per category, seeded), one document per image.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np

from xmcore.data import RetrievalData
from xmcore.errors import XmcoreError
from xmcore_datasets.files import IMAGE_SUFFIXES, from_records

WIKIPEDIA_CATEGORIES = ("art", "biology", "geography", "history", "literature", "media", "music", "royalty", "sport",
                        "warfare")
_TEXT = re.compile(r"<text>(.*?)</text>", re.DOTALL)


def read_wikipedia(params, ctx) -> RetrievalData:
    root = ctx.path(params.root)
    lists = {"train": root / "trainset_txt_img_cat.list", "test": root / "testset_txt_img_cat.list"}
    missing = [p.name for p in lists.values() if not p.is_file()]
    if missing:
        raise XmcoreError(
            f"data.root: {root} has no {' or '.join(missing)}; expected the Wikipedia dataset's folder "
            "(wikipedia_dataset/ with trainset_txt_img_cat.list, testset_txt_img_cat.list, texts/, images/)"
        )
    categories = _wikipedia_categories(root)
    entries = {split: _read_list(path, len(categories)) for split, path in lists.items()}
    held_out = _held_out(len(entries["test"]), params.val_from_test, params.seed)
    records = []
    for split, rows in entries.items():
        for n, (text_id, image_id, category) in enumerate(rows):
            name = categories[category - 1]
            records.append({
                "owner": _wikipedia_image(root, name, image_id),
                "member": _wikipedia_text(root / "texts" / f"{text_id}.xml"),
                "label": name,
                "split": "val" if split == "test" and n in held_out else split,
            })
    return _by_class(from_records(records, str(root), None, 0, root=root))


def _wikipedia_categories(root: Path) -> tuple[str, ...]:
    """The category names, by number: categories.list when the folder has one, else the published ten."""
    listed = root / "categories.list"
    if listed.is_file():
        names = [line.split()[-1] for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        if names:
            return tuple(names)
    return WIKIPEDIA_CATEGORIES


def _read_list(path: Path, categories: int) -> list[tuple[str, str, int]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3 or not fields[2].isdigit() or not 1 <= int(fields[2]) <= categories:
            raise XmcoreError(
                f"{path} line {n}: expected 'text_id<TAB>image_id<TAB>category' with a category 1-{categories}, "
                f"got {line.strip()!r}"
            )
        rows.append((fields[0], fields[1], int(fields[2])))
    if not rows:
        raise XmcoreError(f"{path}: no lines")
    return rows


def _held_out(count: int, wanted: int, seed: int) -> set[int]:
    if wanted >= count:
        raise XmcoreError(f"data.val_from_test: {wanted} of the {count} test pairs would leave no test split; "
                          f"give fewer than {count} (0: no validation split)")
    return set(np.random.default_rng(seed).choice(count, size=wanted, replace=False).tolist()) if wanted else set()


def _wikipedia_image(root: Path, category: str, image_id: str) -> Path:
    """images/<category>/<id>.jpg, or images/<id>.jpg in a flattened copy; a missing file is reported by the
    core's check of every item, with the rest of the bad items."""
    nested = root / "images" / category / f"{image_id}.jpg"
    flat = root / "images" / f"{image_id}.jpg"
    return flat if not nested.is_file() and flat.is_file() else nested


def _wikipedia_text(path: Path) -> str:
    """The section's text: what <text> holds (the files are not always well-formed XML, so no XML parser),
    entities unescaped, whitespace collapsed; '' (reported as an empty caption) when unreadable."""
    try:
        raw = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    found = _TEXT.search(raw)
    return " ".join(html.unescape(found.group(1) if found else raw).split())


def read_pascal_sentences(params, ctx) -> RetrievalData:
    root = ctx.path(params.root)
    images, sentences = root / "dataset", root / "sentence"
    if not images.is_dir() or not sentences.is_dir():
        raise XmcoreError(
            f"data.root: {root} has no dataset/ and sentence/ folders; expected the Pascal Sentence layout "
            "ROOT/dataset/<category>/<image>.jpg and ROOT/sentence/<category>/<image>.txt"
        )
    categories = sorted(d.name for d in images.iterdir() if d.is_dir())
    if not categories:
        raise XmcoreError(f"{images}: no category folders (expected dataset/<category>/<image>.jpg)")
    rng = np.random.default_rng(params.seed)
    records = []
    for category in categories:
        files = sorted(f for f in (images / category).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        split_of = _per_class_split(len(files), params.split_per_class, rng)
        for file, split in zip(files, split_of):
            lines = _sentences(sentences / category, file.stem)
            texts = [" ".join(lines)] if params.sentences == "joined" else lines
            records += [{"owner": file, "member": text, "label": category, "split": split} for text in texts or [""]]
    return _by_class(from_records(records, str(root), None, 0, root=root))


def _per_class_split(count: int, per_class: tuple[int, int, int], rng: np.random.Generator) -> list[str]:
    """train / val / test for ``count`` images of one class: ``per_class`` of each, scaled down for a smaller
    class (val and test first, each at least one while the class has images to spare), the rest train."""
    _, val, test = per_class
    scale = min(1.0, count / max(1, sum(per_class)))
    val, test = (max(1, round(v * scale)) if v and count > 2 else 0 for v in (val, test))
    names = ["val"] * val + ["test"] * test
    names += ["train"] * (count - len(names))
    return [names[i] for i in rng.permutation(count)]


def _sentences(folder: Path, stem: str) -> list[str]:
    """The image's sentences: <stem>.txt, or <stem>txt as one widely used downloader names the files."""
    for name in (f"{stem}.txt", f"{stem}txt"):
        if (folder / name).is_file():
            text = (folder / name).read_text(encoding="utf-8", errors="replace")
            return [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    return []


def _by_class(data: RetrievalData) -> RetrievalData:
    for split in data.splits.values():  # the benchmarks' protocol: a text is relevant to every image of its class
        split.relevance = "label"
    return data
