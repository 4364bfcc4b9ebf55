"""``xmcore data inspect``: what a recipe's dataset holds, before anything trains on it.

Beyond counts, an item may describe itself: a ``describe()`` method returning a dict of fields (a
plugin's sound clip gives its duration and sample rate).  Each field is summarised over the split's
usable items: a float field as min/mean/max, any other (an integer rate, a string) as counts of its
values.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from xmcore.data import RetrievalData, clean_split, materialize
from xmcore.figures import draw_item


def summarize(data: RetrievalData, reports: dict[str, dict[str, Any]], examples: int = 3) -> str:
    lines = [f"source: {data.description or '?'}"]
    for name, split in data.splits.items():
        first, second = split.modalities[0], _shown_member(split)
        per_owner = np.bincount(split.owner, minlength=len(split.items[first])) if len(split.owner) else np.zeros(1)
        report = reports[name]
        lines.append(f"\n[{name}]")
        lines.append("  " + "   ".join(f"{m} items: {len(split.items[m])}" for m in split.modalities))
        lines.append(  # members are aligned: one count serves every member modality
            f"  {' / '.join(split.members)} per {first}: min {per_owner.min()}, mean {per_owner.mean():.2f}, "
            f"max {per_owner.max()}"
        )
        lines += [f"  {m} {fact}" for m in split.modalities for fact in described(split.items[m])]
        if split.labels is not None:
            names = data.extras.get("label_names") or []
            counts = np.bincount(split.labels[split.labels >= 0]) if (split.labels >= 0).any() else []
            top = ", ".join(
                f"{names[i] if i < len(names) else i} ({c})" for i, c in sorted(enumerate(counts), key=lambda t: -t[1])[:5]
            )
            lines.append(f"  labels: {len(set(split.labels.tolist()))} classes, relevance by {split.relevance}; most: {top}")
        if report["problems"]:
            reasons = ", ".join(f"{n} {r}" for r, n in report["reasons"].items())
            lines.append(f"  problems: {len(report['problems'])} items skipped ({reasons})")
            for p in report["problems"][:3]:
                lines.append(f"    {p['item']}: {p['reason']}")
        else:
            lines.append("  problems: none")
        for i in range(min(examples, len(split.items[first]))):
            texts = [split.items[second][j] for j in np.flatnonzero(split.owner == i)[:3]]
            lines.append(f"  e.g. {_describe(split.items[first][i], first, i)}: " + " | ".join(map(str, texts)))
    return "\n".join(lines)


def _shown_member(split) -> str:
    """The member modality shown beside an owner in examples and grids: text where the split has it."""
    return "text" if "text" in split.members else split.members[0]


def described(items) -> list[str]:
    """The fields items give through ``describe()``, one line each: a float field's min/mean/max, any
    other field's values with their counts (the five commonest)."""
    fields: dict[str, list[Any]] = {}
    for item in items:
        describe = getattr(item, "describe", None)
        if callable(describe):
            for key, value in describe().items():
                fields.setdefault(key, []).append(value)
    lines = []
    for key, values in fields.items():
        if all(isinstance(v, (float, np.floating)) for v in values):
            a = np.asarray(values, dtype=float)
            lines.append(f"{key}: min {a.min():.2f}, mean {a.mean():.2f}, max {a.max():.2f}")
        else:
            counts = Counter(values).most_common()
            more = f", and {len(counts) - 5} more" if len(counts) > 5 else ""
            lines.append(f"{key}: " + ", ".join(f"{v} ({n})" for v, n in counts[:5]) + more)
    return lines


def _describe(item: Any, modality: str, index: int) -> str:
    size = getattr(item, "size", None)
    if isinstance(size, tuple):  # an in-memory image
        return f"{modality} {index} ({size[0]}x{size[1]})"
    return str(item)


def inspect(data: RetrievalData) -> tuple[RetrievalData, dict[str, dict[str, Any]]]:
    reports = {}
    for name, split in list(data.splits.items()):
        data.splits[name], reports[name] = clean_split(split)
    return data, reports


def grid(data: RetrievalData, path: Path, split: str = "train", count: int = 12, columns: int = 4) -> Path:
    """A picture of sample items (images; any item with a ``draw(ax)`` method) with (up to two of) their captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xmcore.io import atomic_write_bytes

    s = data.splits[split]
    first, second = s.modalities[0], _shown_member(s)
    n = min(count, len(s.items[first]))
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 3.2, rows * 3.9 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in zip(range(n), axes.flat):
        draw_item(ax, materialize(s.items[first][i]))
        texts = [str(s.items[second][j]) for j in np.flatnonzero(s.owner == i)[:2]]
        ax.set_title("\n".join(textwrap.fill(t, 34) for t in texts), fontsize=8)
    fig.suptitle(f"{data.description}: {split} split, {n} of {len(s.items[first])} {first} items", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (rows * 3.9 + 0.4)))
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
