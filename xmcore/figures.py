"""Drawing helpers shared by the run report (:mod:`xmcore.report`) and ``xmcore data inspect --grid``.

The core knows how to picture two kinds of raw item, images and strings; any other modality's item
pictures itself through a ``draw(ax)`` method (a plugin's sound clip draws its spectrogram).
"""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (figures are only ever written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def is_picture(item: Any) -> bool:
    """A PIL image (duck-typed: ``mode`` and ``size``) or an array ``imshow`` takes as one."""
    return (hasattr(item, "mode") and hasattr(item, "size")) or (isinstance(item, np.ndarray) and item.ndim in (2, 3))


def draw_item(ax, item: Any, text_width: int = 24, fontsize: float = 8) -> bool:
    """One raw item into a matplotlib axis, by the first that applies (a lazy item without a ``draw`` of its
    own is loaded first): its own ``draw(ax)``, a picture, a string as wrapped text, else a note that it
    has no picture.  Returns whether the axis shows a picture (which a caller may frame) rather than text."""
    from xmcore.data import materialize

    draw = getattr(item, "draw", None)
    if not callable(draw):
        item = materialize(item)
        draw = getattr(item, "draw", None)
    if callable(draw):
        draw(ax)
        return True
    if is_picture(item):
        ax.imshow(item)
        return True
    if isinstance(item, str):
        ax.text(0, 0.5, "\n".join(textwrap.wrap(item, text_width)), fontsize=fontsize, va="center",
                transform=ax.transAxes)
    else:
        ax.text(0.5, 0.5, f"({type(item).__name__}: no picture)", ha="center", va="center", fontsize=fontsize)
    return False
