"""Picture explainers: captum's attributions over the model's input, then onto the picture's own pixels.

The explained number is ``cos(embed(picture), target)``: the picture's common-space embedding against the
fixed embedding of the other side of the pair (a text's, in ``xmcore explain``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import LayerAttribution, LayerGradCam
from captum.attr import Occlusion as CaptumOcclusion

from xmcore.data import materialize
from xmcore.errors import XmcoreError, did_you_mean
from xmcore.explain import Explanation, onto_picture
from xmcore.figures import is_picture

MIN_CAM_SIDE = 7
"""The automatic Grad-CAM layer keeps at least this many positions a side: ImageNet CNNs' last stage at
224 pixels, and a deeper stage on small pictures (at 64 pixels, stride 8 rather than 32)."""


def similarity(model, modality: str, target: torch.Tensor):
    """captum's forward function: the cosine of each input's embedding with the fixed ``target``."""

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return (model.embed(modality, batch) * target).sum(-1)

    return forward


def _prepare(model, modality: str, item: Any):
    picture = materialize(item)
    return picture, model.batch(modality, picture)


def _onto(model, modality: str, picture, values: torch.Tensor) -> np.ndarray:
    input_box = getattr(model.encoder(modality).preprocessor, "input_box", None)
    box = input_box(picture.size) if callable(input_box) else None
    return onto_picture(values.detach().float().numpy(), picture.size, box)


def _score(forward, batch) -> float:
    with torch.no_grad():
        return float(forward(batch)[0])


class GradCam:
    def __init__(self, layer: str | None = None):
        self.layer = layer

    def __call__(self, model, modality: str, item: Any, target: torch.Tensor) -> Explanation:
        picture, batch = _prepare(model, modality, item)
        encoder = model.encoder(modality)
        name, layer, shape = choose_layer(encoder, batch, self.layer)
        forward = similarity(model, modality, target)
        cam = LayerGradCam(forward, layer).attribute(batch, relu_attributions=True)
        upsampled = LayerAttribution.interpolate(cam, tuple(batch.shape[-2:]), interpolate_mode="bilinear")
        values = _onto(model, modality, picture, upsampled[0, 0])
        return Explanation(modality, _score(forward, batch), values, details={"layer": name, "grid": list(shape[-2:])})


class Occlusion:
    def __init__(self, window: float = 0.1875, stride: float = 0.25, batch: int = 64, fill: str = "mean"):
        self.window, self.stride, self.batch, self.fill = window, stride, batch, fill

    def __call__(self, model, modality: str, item: Any, target: torch.Tensor) -> Explanation:
        if not is_picture(materialize(item)):
            from xmcore_explain.spectrogram import occlude_spectrogram

            return occlude_spectrogram(model, modality, item, target, self.window, self.stride, self.batch, self.fill)
        picture, batch = _prepare(model, modality, item)
        channels, height, width = batch.shape[1:]
        side = max(1, round(self.window * min(height, width)))
        step = max(1, round(side * self.stride))
        forward = similarity(model, modality, target)
        # "mean": the picture's own mean colour hides a patch without bringing a new colour into it (a grey
        # patch on a light background is itself a shape to the model); "zero": the normalisation's mean colour.
        baseline = batch.mean(dim=(-2, -1), keepdim=True).expand_as(batch) if self.fill == "mean" else 0.0
        with torch.no_grad():
            drop = CaptumOcclusion(forward).attribute(batch, sliding_window_shapes=(channels, side, side),
                                                      strides=(channels, step, step), baselines=baseline,
                                                      perturbations_per_eval=self.batch)
        values = _onto(model, modality, picture, drop[0].mean(0))
        return Explanation(modality, _score(forward, batch), values, details={"window": side, "stride": step, "fill": self.fill})


class IntegratedGradients:
    """Integrated gradients for pictures (input pixels) and texts (word embeddings, see :mod:`xmcore_explain.text`)."""

    def __init__(self, steps: int = 32, batch: int = 32):
        self.steps, self.batch = steps, batch

    def __call__(self, model, modality: str, item: Any, target: torch.Tensor) -> Explanation:
        if isinstance(materialize(item), str):
            from xmcore_explain.text import word_integrated_gradients

            return word_integrated_gradients(model, modality, str(item), target, self.steps, self.batch)
        picture, batch = _prepare(model, modality, item)
        forward = similarity(model, modality, target)
        attributions, delta = CaptumIntegratedGradients(forward).attribute(
            batch, baselines=torch.zeros_like(batch), n_steps=self.steps, internal_batch_size=self.batch,
            return_convergence_delta=True)
        values = _onto(model, modality, picture, attributions[0].sum(0))
        return Explanation(modality, _score(forward, batch), values,
                           details={"steps": self.steps, "convergence_delta": float(delta.abs().max())})


# ---------------------------------------------------------------------------------------------- Grad-CAM's layer


def timm_stages(encoder: torch.nn.Module) -> list[str]:
    """The stages of the first timm model inside ``encoder`` (its ``feature_info``), as module paths
    relative to the encoder, shallowest first; empty when there is none."""
    for prefix, module in encoder.named_modules():
        info = getattr(module, "feature_info", None)
        if isinstance(info, list) and info and all(isinstance(i, dict) and "module" in i for i in info):
            return [f"{prefix}.{i['module']}" if prefix else i["module"] for i in info]
        if hasattr(info, "module_name"):  # a features_only model: timm's FeatureInfo object
            return [f"{prefix}.{n}" if prefix else n for n in info.module_name()]
    return []


def output_shapes(encoder: torch.nn.Module, batch: torch.Tensor, names: list[str]) -> dict[str, tuple[int, ...]]:
    """The output shape of each named module of ``encoder`` on ``batch`` (one forward pass, no gradients)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module, _inputs, output) -> None:  # returns None: the output goes on unchanged
            shapes.setdefault(name, tuple(output.shape) if torch.is_tensor(output) else ())
        return hook

    hooks = [encoder.get_submodule(n).register_forward_hook(record(n)) for n in names]
    try:
        with torch.no_grad():
            encoder(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def choose_layer(encoder: torch.nn.Module, batch: torch.Tensor, name: str | None) -> tuple[str, torch.nn.Module, tuple]:
    """Grad-CAM's layer: ``name``, or the deepest timm stage whose map keeps :data:`MIN_CAM_SIDE` positions a
    side (the shallowest stage when none does); it must give a map ``[batch, channels, height, width]``."""
    if name is None:
        stages = timm_stages(encoder)
        if not stages:
            convs = [n for n, m in encoder.named_modules() if isinstance(m, torch.nn.Conv2d)]
            raise XmcoreError(
                f"gradcam: the image encoder ({type(encoder).__name__}) is not a timm CNN, so no layer is chosen for it; "
                f"give one with --param layer=NAME ({_some(convs, 'its convolutions') if convs else 'it has no convolution'}), "
                "or use --method occlusion, which needs no layer")
        shapes = output_shapes(encoder, batch, stages)
        maps = [n for n in stages if len(shapes.get(n, ())) == 4]
        wide = [n for n in maps if min(shapes[n][-2:]) >= MIN_CAM_SIDE]
        if not maps:
            raise XmcoreError("gradcam: no stage of the image encoder gives a spatial map (a transformer?); "
                              "use --method occlusion, or give a convolutional layer with --param layer=NAME")
        name = wide[-1] if wide else maps[0]
        return name, encoder.get_submodule(name), shapes[name]
    try:
        layer = encoder.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in encoder.named_modules() if n]
        raise XmcoreError(f"gradcam: layer '{name}': the image encoder has no such module; {did_you_mean(name, names)}"
                          f"{_some([n for n in names if n.count('.') <= 1], 'its modules')}") from None
    shape = output_shapes(encoder, batch, [name]).get(name, ())
    if len(shape) != 4:
        raise XmcoreError(f"gradcam: layer '{name}' gives {list(shape) or 'no tensor'}, not a map [batch, channels, "
                          "height, width]; give a convolutional layer, or use --method occlusion")
    return name, layer, shape


def _some(names: list[str], what: str, limit: int = 12) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return f"{what}: {', '.join(names[:limit])}{more}"
