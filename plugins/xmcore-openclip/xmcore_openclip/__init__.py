"""open_clip's towers as xmcore encoders: the image tower or the text tower of any open_clip model.

The weights come from a local file (``checkpoint``), or the tower starts from random weights; this
plugin never downloads anything.  The towers can be fine-tuned or frozen (``freeze: true``) under any
fusion and loss of a recipe.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

import xmcore

PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
"""The parts of open_clip's image preprocessing (``PreprocessCfg``) a recipe may set; the size is the tower's."""


class OpenClipParams(xmcore.Params):
    model_name: str = Field(
        "ViT-B-32",
        description="an open_clip architecture (open_clip.list_models() lists them, e.g. ViT-B-32, RN50, "
        "ViT-B-16-quickgelu); xmcore-test-vit is a tiny one for tests",
    )
    checkpoint: xmcore.RecipePath | None = Field(
        None,
        description="local weights file of the whole open_clip model (open_clip_pytorch_model.bin, "
        "open_clip_model.safetensors, a training checkpoint), loaded strictly; relative to the recipe; "
        "null: random weights",
    )
    pretrained: str | None = Field(
        None,
        description="the open_clip pretrained tag the checkpoint holds (e.g. laion2b_s34b_b79k), for its "
        "preprocessing (mean, std, resize); needs checkpoint: the weights are never downloaded",
    )
    image_size: int | None = Field(None, gt=0, description="image input size; default: the architecture's")
    context_length: int | None = Field(None, gt=1, description="text tokens read per caption; default: the architecture's (77)")
    preprocess: dict[str, Any] = Field(
        {},
        description=f"overrides of the image preprocessing, keys among {', '.join(PREPROCESS_KEYS)}; "
        "default: the pretrained tag's, else the architecture's",
    )

    @field_validator("preprocess")
    @classmethod
    def _preprocess_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(PREPROCESS_KEYS))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; expected some of {', '.join(PREPROCESS_KEYS)}")
        return value


def build_open_clip(params: OpenClipParams, ctx: xmcore.BuildContext):
    """An open_clip model's image or text tower (by the modality), weights from a local file or random."""
    from xmcore_openclip.towers import build_tower

    checkpoint = str(ctx.path(params.checkpoint)) if params.checkpoint else None
    return build_tower(params, ctx.modality or "image", checkpoint)


@xmcore.hookimpl
def xmcore_register_encoders(register):
    register(
        "open-clip",
        build_open_clip,
        params=OpenClipParams,
        modalities=["image", "text"],
        test_params={"model_name": "xmcore-test-vit"},
    )
