"""A timm model as an xmcore image encoder.

Evaluation preprocessing (input size, interpolation, crop, mean and std) comes
from the model's own data config (``timm.data.resolve_data_config``), so a
pretrained model sees images the way it was trained to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import create_transform, resolve_data_config

from xmcore.components import Encoder, Preprocessor
from xmcore.errors import XmcoreError
from xmcore.safeload import load_weights


class ImagePreprocessor(Preprocessor):
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image: Any) -> torch.Tensor:
        return self.transform(image.convert("RGB"))

    def __repr__(self) -> str:
        return f"ImagePreprocessor({self.transform!r})"

    def input_box(self, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
        """Where the model's input lies in a picture of ``size`` (width, height): the transform's resizes and
        centre crops followed step by step; ``None`` if it holds another geometric step."""
        from torchvision import transforms as T

        width, height = float(size[0]), float(size[1])  # the image as the current step sees it
        left, top, scale_x, scale_y = 0.0, 0.0, 1.0, 1.0  # where its pixel (0, 0) lies, and its pixels' size, in the picture's
        for step in getattr(self.transform, "transforms", [self.transform]):
            if isinstance(step, T.Resize):
                new_width, new_height = _resized(width, height, step.size, step.max_size)
                scale_x, scale_y = scale_x * width / new_width, scale_y * height / new_height
                width, height = new_width, new_height
            elif isinstance(step, T.CenterCrop):
                crop_height, crop_width = step.size
                # as torchvision's center_crop rounds (a crop larger than the image pads it: a negative offset)
                left += int(round((width - crop_width) / 2.0)) * scale_x
                top += int(round((height - crop_height) / 2.0)) * scale_y
                width, height = float(crop_width), float(crop_height)
            elif not any(word in type(step).__name__ for word in ("Tensor", "Normalize", "Dtype")):
                return None
        return left, top, left + width * scale_x, top + height * scale_y


def load_weights_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file; pickled files are read with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise XmcoreError(f"encoders.image.checkpoint: no such file {path}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = load_weights(p, "encoders.image.checkpoint", legacy_ok=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise XmcoreError(f"encoders.image.checkpoint: {path} does not hold a state dict")
    return state


class TimmEncoder(Encoder):
    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        checkpoint: str | None = None,
        checkpoint_keys: str = "names",
        img_size: int | None = None,
        crop_pct: float | None = None,
        model_kwargs: dict | None = None,
    ):
        super().__init__()
        kwargs = dict(model_kwargs or {})
        if img_size is not None and _takes_img_size(model_name):
            kwargs["img_size"] = img_size
        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise XmcoreError(
                    f"encoders.image.model_name: timm has no model '{model_name}' (timm.list_models() lists them)"
                ) from None
            if not pretrained:
                raise
            raise _no_weights(model_name, exc) from None
        except OSError as exc:  # the hub's errors when offline or the weights are not cached
            if not pretrained:
                raise
            raise _no_weights(model_name, exc) from None
        if checkpoint is not None:
            state = load_weights_file(checkpoint)
            if checkpoint_keys == "order":
                state = _rename_by_order(state, model_name, kwargs, checkpoint)
            self._load_state(state, checkpoint)
        # Models with a pre-logits stage (VGG's 4096-wide MLP) output head_hidden_size, not num_features.
        self.output_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

        config = resolve_data_config(model=self.model)
        if img_size is not None:
            config["input_size"] = (3, img_size, img_size)
        if crop_pct is not None:
            config["crop_pct"] = crop_pct
        self.data_config = config
        self.preprocessor = ImagePreprocessor(create_transform(**config, is_training=False))

    def _load_state(self, state: dict[str, torch.Tensor], path: str) -> None:
        # The classifier was removed (num_classes=0): its weights are expected in the file, not in the model.
        heads = tuple(f"{n}." for n in _classifier_names(self.model))
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
        result = self.model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise XmcoreError(
                f"encoders.image.checkpoint: {path} does not match timm model: "
                f"missing {len(result.missing_keys)} keys (e.g. {result.missing_keys[:3]}), "
                f"unexpected {len(result.unexpected_keys)} (e.g. {result.unexpected_keys[:3]})"
            )

    def export(self, folder):
        """The state dict holds every weight: a rebuild fetches nothing and reads no checkpoint file."""
        return {"pretrained": False, "checkpoint": None}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def _resized(width: float, height: float, size, max_size: int | None) -> tuple[float, float]:
    """The size torchvision's ``Resize(size, max_size=...)`` gives an image: (h, w) as asked, or the shorter
    side to ``size`` and the longer in proportion (rounded down), both cut down to ``max_size``."""
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return float(size[1]), float(size[0])
    short, long = sorted((width, height))
    requested = size[0] if isinstance(size, (list, tuple)) else size
    new_short, new_long = requested, int(requested * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (float(new_short), float(new_long)) if width <= height else (float(new_long), float(new_short))


def _no_weights(model_name: str, exc: Exception) -> XmcoreError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return XmcoreError(
        f"encoders.image.pretrained: cannot get timm's pretrained weights for '{model_name}' "
        f"({type(exc).__name__}: {first}); without network, give a local file as encoders.image.checkpoint"
    )


def _rename_by_order(state: dict[str, torch.Tensor], model_name: str, kwargs: dict, path: str) -> dict[str, torch.Tensor]:
    """Give the file's tensors the names of the full timm model's tensors, position by position.

    The full model (classifier included) is built only for its key order; every
    count and shape must agree, or loading fails naming the first mismatch.
    """
    classes = next((v.shape[0] for k, v in reversed(list(state.items())) if v.ndim == 2), 1000)
    reference = timm.create_model(model_name, pretrained=False, num_classes=classes, **kwargs).state_dict()
    if len(reference) != len(state):
        raise XmcoreError(
            f"encoders.image.checkpoint: {path} has {len(state)} tensors, timm's {model_name} {len(reference)}; "
            "checkpoint_keys=order needs the same architecture"
        )
    renamed = {}
    for (theirs, tensor), (ours, expected) in zip(state.items(), reference.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise XmcoreError(
                f"encoders.image.checkpoint: {path}: tensor '{theirs}' {tuple(tensor.shape)} does not fit "
                f"'{ours}' {tuple(expected.shape)} of timm's {model_name} at the same position"
            )
        renamed[ours] = tensor
    return renamed


def _classifier_names(model) -> set[str]:
    name = getattr(model, "default_cfg", {}).get("classifier", "")
    names = name if isinstance(name, (list, tuple)) else [name]
    return {n for n in names if n}


def _takes_img_size(model_name: str) -> bool:
    # Transformers need their position embeddings sized to the input; CNNs take any size.
    return any(tag in model_name for tag in ("vit", "deit", "swin", "maxvit", "coatnet", "eva", "beit"))
