"""Text augmentations: the EDA word operations and synonym replacement (Wei & Zou, EMNLP 2019)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from xmcore.errors import XmcoreError


def delete(words: list[str], n: int) -> list[str]:
    if len(words) <= 1:
        return words
    drop = set(random.sample(range(len(words)), min(n, len(words) - 1)))
    return [w for i, w in enumerate(words) if i not in drop]


def swap(words: list[str], n: int) -> list[str]:
    words = list(words)
    if len(words) < 2:
        return words
    for _ in range(n):
        i, j = random.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return words


def insert(words: list[str], n: int) -> list[str]:
    words = list(words)
    if not words:
        return words
    for _ in range(n):
        words.insert(random.randrange(len(words) + 1), random.choice(words))
    return words


class SynonymReplacement:
    def __init__(self, table: dict[str, list[str]]):
        self.table = table

    def __call__(self, words: list[str], n: int) -> list[str]:
        words = list(words)
        candidates = [i for i, w in enumerate(words) if w.lower() in self.table]
        for i in random.sample(candidates, min(n, len(candidates))):
            words[i] = random.choice(self.table[words[i].lower()])
        return words


def read_synonyms(path: Path) -> dict[str, list[str]]:
    """``word syn1 syn2`` per line (every word of a line is a synonym of the others), or a JSON mapping."""
    if not path.is_file():
        raise XmcoreError(f"augment: synonyms file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    table: dict[str, list[str]] = {}
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise XmcoreError(f"augment: synonyms file {path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise XmcoreError(f"augment: synonyms file {path}: expected a mapping word -> [synonyms]")
        for word, syns in raw.items():
            table[word.lower()] = [s for s in syns if s != word]
    else:
        for line in text.splitlines():
            group = [w for w in line.split() if w]
            for w in group:
                table.setdefault(w.lower(), []).extend(s for s in group if s != w)
    return {w: s for w, s in table.items() if s}


class WordOp:
    """Apply a word-list operation to ``alpha`` of a caption's words (at least one), with probability ``p``."""

    def __init__(self, op, alpha: float, p: float):
        self.op = globals()[op] if isinstance(op, str) else op
        self.alpha = alpha
        self.p = p

    def __call__(self, caption: str) -> str:
        if self.p < 1 and random.random() >= self.p:
            return caption
        words = caption.split()
        n = max(1, int(round(self.alpha * len(words))))
        return " ".join(self.op(words, n))
