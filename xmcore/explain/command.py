"""``xmcore explain``: one (picture, text) pair explained with a trained model, the results written to files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from xmcore.errors import XmcoreError
from xmcore.explain import Explanation, explain, load_model


@dataclass
class Explained:
    image: Explanation
    words: Explanation
    files: dict[str, Path]
    out_dir: Path


def method(plugins, name: str, modality: str, option: str, params: Sequence[str] = ()):
    """The explainer component ``name`` for ``modality`` and its validated parameters (``KEY=VALUE`` words)."""
    import yaml
    from pydantic import ValidationError

    registry = plugins["explainer"]
    component = registry.get(name)  # an unknown name: the installed ones and the closest match
    if not component.accepts(modality):
        fits = ", ".join(c.name for c in registry if c.accepts(modality)) or "none installed"
        raise XmcoreError(f"{option}: '{name}' explains {', '.join(component.modalities)}, not {modality}; for {modality}: {fits}")
    values: dict[str, Any] = {}
    for word in params:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise XmcoreError(f"--param: expected KEY=VALUE, got '{word}'")
        values[key.strip()] = yaml.safe_load(value) if value.strip() else None
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


def explain_pair(model_dir: Path, image: Path, text: str, plugins, image_method: str = "gradcam",
                 text_method: str = "integrated-gradients", params: Sequence[str] = (), out_dir: Path | None = None) -> Explained:
    """Check every input before the model loads, explain the picture against the text and the text against the
    picture, and write the files (:mod:`xmcore.explain.outputs`)."""
    from xmcore.explain.outputs import write_explanation

    if not text.strip():
        raise XmcoreError("--text: the text is empty; give the words to explain, e.g. --text \"a red circle\"")
    picture_method = method(plugins, image_method, "image", "--method", params)
    words_method = method(plugins, text_method, "text", "--text-method")
    picture = open_picture(image)
    model = load_model(model_dir, plugins)
    missing = [m for m in ("image", "text") if m not in model.encoders]
    if missing:
        raise XmcoreError(f"{model.source}: explain needs a picture model and a text model, and it has no "
                          f"{' and no '.join(missing)} model (it has: {', '.join(model.encoders)})")
    image_explained = explain(*picture_method, model, "image", picture, model.target("text", text))
    words_explained = explain(*words_method, model, "text", text, model.target("image", picture))
    out_dir = Path(out_dir) if out_dir is not None else default_out(image)
    files = write_explanation(out_dir, picture, text, image_explained, words_explained)
    return Explained(image_explained, words_explained, files, out_dir)


def summary(result: Explained, top: int = 5) -> str:
    """What ``xmcore explain`` prints: the score, where the map peaks, the strongest words, the files."""
    from xmcore.explain import peak

    image, words = result.image, result.words
    x, y = peak(image.attributions)
    shown = {"layer": "layer {}", "grid": "a {0[0]} x {0[1]} grid", "window": "{} px patches"}
    how = ", ".join(shown[k].format(v) for k, v in image.details.items() if k in shown)
    lines = [f"score (cosine): {image.score:.4f}",
             f"picture: {image.method}{f' ({how})' if how else ''}; the map peaks at x={x:.0f}, y={y:.0f} "
             f"of {image.attributions.shape[1]} x {image.attributions.shape[0]}"]
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
