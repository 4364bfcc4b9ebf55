"""Explanations of a match: which pixels of a picture and which words of a text make the pair's cosine high.

    xmcore explain RUN_DIR_OR_INDEX --image PATH --text "..." [--method gradcam] [--out DIR]

The methods are components of the kind ``explainer`` (hook ``xmcore_register_explainers``; the
first-party ones, on captum, are in ``plugins/xmcore-explain``).  The core gives them the trained model
(:class:`ExplainModel`: the real encoders, never cached features), the fixed embedding of the other
side of the pair, and two helpers every method needs: :func:`onto_picture` (a map over the model's
input back onto the picture's own pixels, through the preprocessor's ``input_box``) and
:func:`to_words` (token attributions summed into the words of the text).  A map over an item that is
neither a picture nor a text comes with its :class:`Canvas`: what the map lies on, as the encoder read
it (a spectrogram, say), so that the core draws it without knowing the modality.
:mod:`xmcore.explain.outputs` writes what ``xmcore explain`` writes and draws a map into a figure.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from xmcore.errors import XmcoreError
from xmcore.explain.model import ExplainModel, load_model

__all__ = ["Canvas", "ExplainModel", "Explanation", "Word", "explain", "load_model", "onto_picture", "peak", "to_words", "words_of"]


@dataclass
class Word:
    """A word of the explained text: its characters, and the sum of its tokens' attributions."""

    text: str
    start: int
    end: int
    attribution: float
    read: bool = True  # False: the model read no token of it (a cut-off tail, punctuation its tokenizer drops)


@dataclass
class Canvas:
    """What a 2-D map over an item other than a picture lies on, for drawing it: ``background`` has the map's
    shape ``[rows, columns]`` (e.g. the log-spectrogram an encoder read: rows are frequency bands, columns
    time frames); ``extent`` ``(left, right, bottom, top)`` places its columns and rows in the units that
    ``xlabel`` and ``ylabel`` name (``None``: column and row numbers); row 0 is drawn at the bottom."""

    background: np.ndarray
    extent: tuple[float, float, float, float] | None = None
    xlabel: str = ""
    ylabel: str = ""


@dataclass
class Explanation:
    """One explanation of a pair's cosine ``score`` in terms of one item of ``modality``.

    ``attributions``: for a picture ``[height, width]`` over its own pixels (positive: raises the score);
    for a text one value per word of :attr:`words`; for any other item a 2-D map over what :attr:`canvas`
    shows (the same shape).  ``details``: what the method wants to say about itself (the layer Grad-CAM
    used, the integration's convergence delta)."""

    modality: str
    score: float
    attributions: np.ndarray
    words: list[Word] | None = None
    method: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    canvas: Canvas | None = None

    def top_words(self, n: int = 5, against: bool = False) -> list[Word]:
        """The ``n`` words that raise the score most, strongest first (``against``: that lower it most)."""
        sign = -1 if against else 1
        read = [w for w in self.words or [] if w.read and sign * w.attribution > 0]
        return sorted(read, key=lambda w: -sign * w.attribution)[:n]


def words_of(text: str) -> list[tuple[int, int]]:
    """The words of a text, as the characters ``(start, end)`` of each run of non-space characters."""
    return [m.span() for m in re.finditer(r"\S+", text)]


def to_words(text: str, spans: Sequence[tuple[int, int] | None], values: Sequence[float]) -> list[Word]:
    """Token attributions (``values``, one per token, each read from ``spans`` of the text) summed into the
    text's words: a word gets every token that starts inside it, so sub-word pieces ("un", "##believ",
    "##able") and the pieces a tokenizer splits off ("don", "'", "t") add up to their word.  Tokens from
    no characters ([CLS], [SEP]) belong to no word."""
    words = words_of(text)
    totals = [0.0] * len(words)
    read = [False] * len(words)
    starts = [start for start, _ in words]
    for span, value in zip(spans, values, strict=True):
        if span is None:
            continue
        at = int(np.searchsorted(starts, span[0], side="right")) - 1
        if at >= 0 and span[0] < words[at][1]:
            totals[at] += float(value)
            read[at] = True
    return [Word(text[a:b], a, b, totals[i], read[i]) for i, (a, b) in enumerate(words)]


def onto_picture(values: Any, size: tuple[int, int], box: tuple[float, float, float, float] | None) -> np.ndarray:
    """A map over the model's input (``[h, w]``, any resolution: a layer's grid or the input's pixels) as a map
    over a picture of ``size`` (width, height): each picture pixel takes the bilinear value at its place in
    the model's input, which shows the part ``box`` of the picture (the preprocessor's ``input_box``;
    ``None``: all of it).  Pixels the model never saw (cropped away) get 0."""
    import torch

    grid = torch.as_tensor(np.asarray(values, dtype=np.float32))
    width, height = size
    left, top, right, bottom = box if box is not None else (0.0, 0.0, float(width), float(height))
    xs = (torch.arange(width, dtype=torch.float32) + 0.5 - left) / (right - left) * 2 - 1
    ys = (torch.arange(height, dtype=torch.float32) + 0.5 - top) / (bottom - top) * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    sampled = torch.nn.functional.grid_sample(grid[None, None], torch.stack([gx, gy], -1)[None], mode="bilinear",
                                              padding_mode="border", align_corners=False)[0, 0]
    seen = (gx.abs() <= 1) & (gy.abs() <= 1)
    return torch.where(seen, sampled, torch.zeros_like(sampled)).numpy()


def peak(values: np.ndarray) -> tuple[float, float]:
    """Where a picture's map is highest, as ``(x, y)`` in its pixels (a pixel's centre is at +0.5): of the
    pixels at the maximum (a plateau, as a coarse map upsampled onto the picture has at its border), the
    one nearest their centroid rather than the first in reading order."""
    values = np.asarray(values, dtype=np.float64)
    top = values.max()
    ys, xs = np.nonzero(values >= top - 1e-6 * max(1.0, abs(top)))
    nearest = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    return float(xs[nearest]) + 0.5, float(ys[nearest]) + 0.5


def explain(component, params, model: ExplainModel, modality: str, item: Any, target) -> Explanation:
    """Run one explainer component on ``item`` of ``modality`` against the fixed embedding ``target``; the
    explanation names its method and its map's shape is checked against the contract."""
    if not component.accepts(modality):
        raise XmcoreError(f"explainer '{component.name}' explains {', '.join(component.modalities)}, not {modality}")
    from xmcore.registry import BuildContext

    from xmcore.data import materialize

    explainer = component.build(params, BuildContext(modality=modality))
    result = explainer(model, modality, item, target)
    result = dataclasses.replace(result, method=component.name, attributions=np.asarray(result.attributions, dtype=np.float32))
    shape, item = result.attributions.shape, materialize(item)
    if modality == "image" and shape != (item.height, item.width):
        raise XmcoreError(f"explainer '{component.name}' returned a map of shape {shape} for a {item.width} x "
                          f"{item.height} picture; expected [height, width] over its pixels (the plugin's bug)")
    if result.words is not None and shape != (len(result.words),):
        raise XmcoreError(f"explainer '{component.name}' returned {shape} attributions for {len(result.words)} words "
                          "(the plugin's bug)")
    if result.canvas is not None and shape != np.shape(result.canvas.background):
        raise XmcoreError(f"explainer '{component.name}' returned a map of shape {shape} over a canvas of shape "
                          f"{np.shape(result.canvas.background)}; expected the same shape (the plugin's bug)")
    if modality != "image" and result.words is None and result.canvas is None:
        raise XmcoreError(f"explainer '{component.name}' returned a map over a {modality} item without the canvas it "
                          "lies on (Explanation.canvas; the plugin's bug)")
    return result
