"""What ``xmcore explain`` writes: the picture with its heatmap, the raw map, the words as JSON and as HTML."""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from xmcore.explain import Explanation, Word, peak
from xmcore.io import atomic_write_bytes, atomic_write_text

FILES = {"overlay": "overlay.png", "map": "map.npy", "words": "words.json", "html": "words.html"}


def write_explanation(out_dir: Path, picture, text: str, image: Explanation, words: Explanation | None) -> dict[str, Path]:
    """Write the four files into ``out_dir`` (atomically, each); returns their paths by kind."""
    out_dir = Path(out_dir)
    buf = io.BytesIO()
    np.save(buf, image.attributions.astype(np.float32))
    paths = {
        "overlay": atomic_write_bytes(out_dir / FILES["overlay"], overlay_png(picture, text, image, words)),
        "map": atomic_write_bytes(out_dir / FILES["map"], buf.getvalue()),
        "words": atomic_write_text(out_dir / FILES["words"], json.dumps(words_record(text, image, words), indent=2) + "\n"),
        "html": atomic_write_text(out_dir / FILES["html"], words_html(text, image, words)),
    }
    return paths


def words_record(text: str, image: Explanation, words: Explanation | None) -> dict[str, Any]:
    """The explanation as JSON: the pair's score, each method and its details, one entry per word."""
    x, y = peak(image.attributions)
    return {
        "text": text,
        "score": round(image.score, 6),
        image.modality: {"method": image.method, "map": FILES["map"], "shape": list(image.attributions.shape),
                         "peak": [x, y], "details": _plain(image.details)},
        "words_by": {"method": words.method, "details": _plain(words.details)} if words else None,
        "words": [{"word": w.text, "start": w.start, "end": w.end, "attribution": round(w.attribution, 6),
                   "read": w.read} for w in (words.words if words else [])],
    }


def _strength(word: Word, scale: float) -> float:
    return min(1.0, abs(word.attribution) / scale) if scale > 0 and word.read else 0.0


def _scale(words: Explanation | None) -> float:
    return max((abs(w.attribution) for w in words.words if w.read), default=0.0) if words and words.words else 0.0


def words_html(text: str, image: Explanation, words: Explanation | None) -> str:
    """A small page: the text with each word's background green (raises the score) or red (lowers it), as
    strong as its attribution relative to the strongest word's; the value on hover."""
    scale = _scale(words)
    spans, at = [], 0
    for w in words.words if words else []:
        spans.append(html.escape(text[at:w.start]))
        strength = _strength(w, scale)
        colour = "44, 160, 44" if w.attribution >= 0 else "214, 39, 40"
        title = f"{w.attribution:+.4f}" if w.read else "not read by the model"
        spans.append(f'<span style="background: rgba({colour}, {strength:.3f})" title="{title}">{html.escape(w.text)}</span>')
        at = w.end
    spans.append(html.escape(text[at:]))
    method = html.escape(words.method) if words else "none"
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>xmcore explain</title>\n"
        "<style>body{font:16px/1.6 sans-serif;margin:2em} p.words span{padding:0 .15em;border-radius:3px}"
        " .note{color:#666;font-size:13px}</style></head><body>\n"
        f"<p class=\"words\">{''.join(spans)}</p>\n"
        f"<p class=\"note\">score (cosine) {image.score:.4f}; words by {method}: green raises the score, red "
        "lowers it, the stronger the colour the larger the effect (hover for the value)</p>\n</body></html>\n"
    )


def overlay_png(picture, text: str, image: Explanation, words: Explanation | None) -> bytes:
    """The picture beside the picture under its heatmap, the score and method in the title, and the text
    below with its words coloured as in the HTML.  (An item with a :class:`~xmcore.explain.Canvas`, such as a
    spectrogram, is drawn the same way: its canvas beside the canvas under the map.)"""
    from xmcore.figures import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.9))
    draw_map(axes[0], picture, image, overlay=False)
    shown = draw_map(axes[1], picture, image)
    bar = fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04, ticks=[0, 0.5, 1])
    bar.ax.tick_params(labelsize=7)
    bar.set_label("raises the score (share of the peak)", fontsize=7)
    axes[0].set_title("picture" if image.canvas is None else f"{image.modality} (as the model reads it)", fontsize=9)
    axes[1].set_title(f"{image.method}: score {image.score:.3f}", fontsize=9)
    _draw_words(fig, text, words)
    fig.subplots_adjust(left=0.02 if image.canvas is None else 0.08, right=0.9, top=0.9, bottom=0.2, wspace=0.1 if image.canvas is None else 0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def relative_map(values: np.ndarray) -> np.ndarray:
    """What raises the score, as a share of the strongest place (0 to 1): what a heatmap shows.  The raw,
    signed values are in ``map.npy``."""
    values = np.asarray(values, dtype=np.float32)
    top = float(values.max()) if values.size else 0.0
    return np.clip(values / top, 0, 1) if top > 0 else np.zeros_like(values)


def draw_map(ax, item, explanation: Explanation, overlay: bool = True, marker: bool = True):
    """One explained item into a matplotlib axis: the picture (or, for a map with a canvas, the canvas:
    what the map lies on), and over it (``overlay``) the map's :func:`relative_map` in a heatmap, its peak
    marked with a cross.  Returns the heatmap's image (for a colour bar), or ``None`` without ``overlay``.

    The drawing used by ``xmcore explain``'s ``overlay.png`` and by the report's explained gallery."""
    values = np.asarray(explanation.attributions)
    canvas = explanation.canvas
    if canvas is None:
        from xmcore.data import materialize

        ax.set_xticks([])
        ax.set_yticks([])
        ax.imshow(materialize(item))
        rows, columns = values.shape
        extent, origin = (0, columns, rows, 0), "upper"
    else:
        rows, columns = np.shape(canvas.background)
        extent, origin = canvas.extent or (0, columns, 0, rows), "lower"
        ax.imshow(canvas.background, origin=origin, extent=extent, aspect="auto", cmap="gray_r", interpolation="nearest")
        ax.set_xlabel(canvas.xlabel, fontsize=7)
        ax.set_ylabel(canvas.ylabel, fontsize=7)
        ax.tick_params(labelsize=6)
    if not overlay:
        return None
    shown = ax.imshow(relative_map(values), cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent, origin=origin,
                      interpolation="bilinear", aspect="auto" if canvas is not None else None)
    if marker:
        x, y = peak(values)
        left, right, bottom, top = extent
        # peak() counts rows from the array's first; the first row is at `top` when drawn from the top down
        first, last = (top, bottom) if origin == "upper" else (bottom, top)
        ax.plot([left + x / columns * (right - left)], [first + y / rows * (last - first)], marker="+",
                color="white", markersize=12, mew=2)
    return shown


def _draw_words(fig, text: str, words: Explanation | None) -> None:
    """The text along the figure's foot, each word on a box coloured by its attribution."""
    scale = _scale(words)
    items = words.words if words and words.words else [Word(text, 0, len(text), 0.0, False)]
    renderer = fig.canvas.get_renderer()
    x, y, width = 0.03, 0.07, fig.get_figwidth() * fig.dpi
    for w in items:
        strength = _strength(w, scale)
        rgb = (0.17, 0.63, 0.17) if w.attribution >= 0 else (0.84, 0.15, 0.16)
        label = fig.text(x, y, w.text, fontsize=10, va="center",
                         bbox={"facecolor": (*rgb, strength), "edgecolor": "none", "pad": 1.5})
        x += (label.get_window_extent(renderer).width + 6) / width
        if x > 0.95:
            x, y = 0.03, y - 0.06
    method = f"words by {words.method}" if words else "no word attributions"
    fig.text(0.03, 0.14, f"{method} (green raises the score, red lowers it)", fontsize=8, color="#555555", va="center")


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    """Details made JSON-safe: numbers, text, booleans and None as they are; lists, tuples and arrays as JSON lists
    (nested as given); a dict as an object; a numpy or torch scalar as its number; anything else as text."""
    return {str(key): _plain_value(value) for key, value in details.items()}


def _plain_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity (json.dumps would write a bare NaN no parser takes)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, dict):
        return _plain(value)
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    if hasattr(value, "tolist") and np.ndim(value) > 0:  # a numpy array, a torch tensor
        return _plain_value(value.tolist())
    if hasattr(value, "item") and np.ndim(value) == 0:  # a numpy or torch scalar: its Python number
        return _plain_value(value.item())
    try:
        return _plain_value(float(value))
    except (TypeError, ValueError):
        return str(value)


def coarse_map(values: np.ndarray, most: int = 64) -> np.ndarray:
    """A map shrunk by area averaging until no side is over ``most`` cells, its aspect kept (a smaller map
    as it is): what a client draws or reads without receiving every pixel of a large picture."""
    import torch

    grid = np.asarray(values, dtype=np.float32)
    grid = grid.reshape(1, -1) if grid.ndim == 1 else grid
    factor = max(grid.shape) / most
    if factor <= 1:
        return grid
    shape = tuple(max(1, round(side / factor)) for side in grid.shape)
    return torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(grid)[None, None], shape)[0, 0].numpy()


def heatmap_png(picture, image: Explanation, min_side: int = 256, max_side: int = 1024) -> bytes:
    """The picture under its heatmap (jet, the more opaque the more a place raises the score), enlarged by a
    whole factor until its shorter side reaches ``min_side`` (its longer side kept within ``max_side``; a
    picture longer than that is shrunk to it), the method and score along its foot: an image of the
    picture's own proportions, to lay over it."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw, ImageFont

    width, height = picture.size
    if max(width, height) > max_side:
        size = tuple(max(1, round(side * max_side / max(width, height))) for side in (width, height))
    else:
        scale = max(1, min(-(-min_side // min(width, height)), max_side // max(width, height)))
        size = (width * scale, height * scale)
    base = picture.convert("RGB").resize(size, Image.NEAREST if size[0] >= width else Image.BILINEAR)
    base = np.asarray(base, dtype=np.float32) / 255
    values = np.asarray(Image.fromarray(image.attributions.astype(np.float32), "F").resize(size, Image.BILINEAR))
    relative = relative_map(values)
    alpha = (0.15 + 0.5 * relative)[..., None]
    blended = base * (1 - alpha) + colormaps["jet"](relative)[..., :3] * alpha
    out = Image.fromarray((blended * 255).round().astype(np.uint8), "RGB")
    font = ImageFont.load_default(size=max(10, min(size) // 18))
    label = f"{image.method}  score {image.score:.3f}"
    draw = ImageDraw.Draw(out, "RGBA")
    box = draw.textbbox((0, 0), label, font=font)
    band = box[3] - box[1] + 8
    draw.rectangle((0, size[1] - band, size[0], size[1]), fill=(0, 0, 0, 150))
    draw.text((4, size[1] - band + 4 - box[1]), label, fill=(255, 255, 255), font=font)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def canvas_png(item, explanation: Explanation) -> bytes:
    """A map over an item with a :class:`~xmcore.explain.Canvas` (not a picture) as a small figure: the
    canvas under the heatmap (:func:`draw_map`), the method and score in the title."""
    from xmcore.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    draw_map(ax, item, explanation)
    ax.set_title(f"{explanation.modality}: {explanation.method}, score {explanation.score:.3f}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
