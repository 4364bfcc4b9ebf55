"""Image encoders built on timm: any model ``timm.create_model`` knows, VGG16 included."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import xmcore


class TimmParams(xmcore.Params):
    model_name: str = Field("resnet18", description="timm model name (timm.list_models() lists them)")
    pretrained: bool = Field(False, description="load timm's pretrained weights from the Hugging Face hub (needs network)")
    checkpoint: xmcore.RecipePath | None = Field(
        None,
        description="local weights file (.pth/.pt/.bin/.safetensors) loaded strictly; relative to the recipe, or pkg://package/path",
    )
    checkpoint_keys: Literal["names", "order"] = Field(
        "names",
        description="match checkpoint tensors to the model by name, or by position (same count and shapes, e.g. "
        "ports of TF EfficientNet-Lite weights whose names differ)",
    )
    img_size: int | None = Field(None, gt=0, description="input size; default: the model's own data config")
    crop_pct: float | None = Field(None, gt=0, le=1, description="centre-crop fraction at evaluation; default: the model's")
    model_kwargs: dict = Field({}, description="extra keyword arguments for timm.create_model (e.g. drop_rate)")


def build_timm(params: TimmParams, ctx: xmcore.BuildContext):
    """Any timm model, classifier removed; its pooled features feed the fusion."""
    from xmcore_vision.timm_encoder import TimmEncoder

    checkpoint = str(ctx.path(params.checkpoint)) if params.checkpoint else None
    return TimmEncoder(
        params.model_name,
        pretrained=params.pretrained,
        checkpoint=checkpoint,
        checkpoint_keys=params.checkpoint_keys,
        img_size=params.img_size,
        crop_pct=params.crop_pct,
        model_kwargs=params.model_kwargs,
    )


@xmcore.hookimpl
def xmcore_register_encoders(register):
    register(
        "timm",
        build_timm,
        params=TimmParams,
        modalities=["image"],
        test_params={"model_name": "test_resnet", "img_size": 32},
    )
