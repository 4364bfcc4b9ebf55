"""``xmcore explain``: one (picture, text) pair -- or (item of any modality, text) -- explained with a trained model,
the results written to files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from xmcore.errors import XmcoreError
from xmcore.explain import Explanation, explain, load_model


@dataclass
class Explained:
    image: Explanation  # the explained item's map: a picture's, or any other modality's over its canvas
    words: Explanation
    files: dict[str, Path]
    out_dir: Path

    @property
    def item(self) -> Explanation:
        return self.image


def method(plugins, name: str, modality: str, option: str, params: Sequence[str] = ()):
    """The explainer component ``name`` for ``modality`` and its validated parameters (``KEY=VALUE`` words)."""
    from pydantic import ValidationError

    from xmcore.recipe import read_yaml

    registry = plugins["explainer"]
    component = registry.get(name)  # an unknown name: the installed ones and the closest match
    if not component.accepts(modality):
        fits = ", ".join(c.name for c in registry if c.accepts(modality)) or "none installed"
        modalities = list(component.modalities)
        explains = " and ".join(filter(None, [", ".join(modalities[:-1]), modalities[-1]]))
        raise XmcoreError(f"{option}: '{name}' explains {explains}, not {modality}; for {modality}: {fits}")
    values: dict[str, Any] = {}
    for word in params:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise XmcoreError(f"--param: expected KEY=VALUE, got '{word}'")
        values[key.strip()] = read_yaml(value, f"--param {key.strip()}", plain_text_ok=True) if value.strip() else None
    try:
        return component, component.params.model_validate(values)
    except ValidationError as exc:
        lines = [f"--param {'.'.join(map(str, e['loc'])) or '?'}: {e['msg']}" for e in exc.errors()]
        known = ", ".join(component.params.model_fields) or "none"
        raise XmcoreError(f"{'; '.join(lines)} (the parameters of '{name}': {known}; `xmcore plugins` describes them)") from None


def open_picture(path: Path):
    """The picture at ``path`` as an RGB PIL image, or an error that says why it cannot be read."""
    from xmcore.media import read_image, read_query_file

    return read_query_file(path, read_image, "--image")


def default_out(image: Path) -> Path:
    return Path("explanations") / f"{Path(image).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


DEFAULT_METHOD = "gradcam"


def default_method(plugins, modality: str) -> str:
    """``--method`` when none is given: Grad-CAM where it explains ``modality``, else the first installed method
    that does (occlusion for a modality of a plugin's)."""
    registry = plugins["explainer"]
    if DEFAULT_METHOD in registry and registry.get(DEFAULT_METHOD).accepts(modality):
        return DEFAULT_METHOD
    fits = [c.name for c in registry if c.accepts(modality)]
    if not fits:
        raise XmcoreError(f"--{modality}: no installed explainer explains {modality} (`xmcore plugins` lists them)")
    return fits[0]


def explain_pair(model_dir: Path, image: Path, text: str, plugins, image_method: str | None = "gradcam",
                 text_method: str = "integrated-gradients", params: Sequence[str] = (), out_dir: Path | None = None) -> Explained:
    """:func:`explain_file` for a picture: ``--image FILE``."""
    return explain_file(model_dir, "image", image, text, plugins, image_method, text_method, params, out_dir)


def explain_file(model_dir: Path, modality: str, path: Path, text: str, plugins, item_method: str | None = None,
                 text_method: str = "integrated-gradients", params: Sequence[str] = (), out_dir: Path | None = None) -> Explained:
    """Check every input (a picture before the model loads; a file of another modality is read by the model's
    encoder of it), explain the item against the text and the text against the item, and write the files
    (:mod:`xmcore.explain.outputs`)."""
    from xmcore.explain.outputs import write_explanation

    option = f"--{modality}"
    if not text.strip():
        raise XmcoreError("--text: the text is empty; give the words to explain, e.g. --text \"a red circle\"")
    item_method = item_method or default_method(plugins, modality)
    chosen = method(plugins, item_method, modality, "--method", params)
    words_method = method(plugins, text_method, "text", "--text-method")
    item = open_picture(path) if modality == "image" else None
    model = load_model(model_dir, plugins)
    missing = [m for m in (modality, "text") if m not in model.encoders]
    if missing:
        what = "a picture model" if modality == "image" else f"a '{modality}' model"
        raise XmcoreError(f"{model.source}: explain needs {what} and a text model, and it has no "
                          f"{' and no '.join(missing)} model (it has: {', '.join(model.encoders)})")
    if item is None:
        item = read_file(model, modality, path, option)
    item_explained = explain(*chosen, model, modality, item, model.target("text", text))
    words_explained = explain(*words_method, model, "text", text, model.target(modality, item))
    out_dir = Path(out_dir) if out_dir is not None else default_out(path)
    files = write_explanation(out_dir, item, text, item_explained, words_explained)
    return Explained(item_explained, words_explained, files, out_dir)


def read_file(model, modality: str, path: Path, option: str):
    """A file of ``modality`` as a raw item, read as the model's encoder of it reads query files."""
    from xmcore.media import query_reader, read_query_file

    reader = query_reader(model.encoder(modality), modality)
    if reader is None:
        raise XmcoreError(f"{option}: the model's {modality} encoder reads no files (it has no read_query)")
    return read_query_file(path, reader, option)


def summary(result: Explained, top: int = 5) -> str:
    """What ``xmcore explain`` prints: the score, where the map peaks, the strongest words, the files."""
    from xmcore.explain import peak

    image, words = result.image, result.words
    x, y = peak(image.attributions)
    shown = {"layer": "layer {}", "grid": "a {0[0]} x {0[1]} grid", "window": "{} px patches"}
    if image.canvas is not None:
        shown["window"] = "{0} x {0} patches"
    how = ", ".join(shown[k].format(v) for k, v in image.details.items() if k in shown)
    rows, columns = image.attributions.shape
    if image.canvas is None:
        where = f"x={x:.0f}, y={y:.0f} of {columns} x {rows}"
    else:
        left, right, bottom, top_ = image.canvas.extent or (0, columns, 0, rows)
        at_x, at_y = left + x / columns * (right - left), bottom + y / rows * (top_ - bottom)
        where = f"{image.canvas.xlabel or 'column'} {at_x:.2f}, {image.canvas.ylabel or 'row'} {at_y:.1f} of {rows} x {columns}"
    lines = [f"score (cosine): {image.score:.4f}",
             f"{'picture' if image.canvas is None else image.modality}: {image.method}{f' ({how})' if how else ''}; "
             f"the map peaks at {where}"]
    lines.append(f"words for the match ({words.method}), strongest first: "
                 + (", ".join(f"{w.text} {w.attribution:+.3f}" for w in words.top_words(top)) or "none"))
    against = words.top_words(top, against=True)
    if against:
        lines.append("words against it: " + ", ".join(f"{w.text} {w.attribution:+.3f}" for w in against))
    unread = [w.text for w in words.words or [] if not w.read]
    if unread:
        lines.append(f"not read by the text model: {' '.join(unread)}")
    lines.append(f"written: {', '.join(str(p) for p in result.files.values())}")
    return "\n".join(lines)
