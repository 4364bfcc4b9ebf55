"""Retrieval losses over a batch of matching pairs."""

from __future__ import annotations

import math

from pydantic import Field

import xmcore


class InfoNCEParams(xmcore.Params):
    temperature: float = Field(0.07, gt=0, description="initial temperature (CLIP: 0.07)")
    learn_temperature: bool = Field(True, description="learn the temperature (as a log-scale) with the model")
    max_scale: float = Field(100.0, gt=0, description="upper bound of the learned logit scale 1/temperature")


class TripletParams(xmcore.Params):
    margin: float = Field(0.2, ge=0, description="hinge margin")
    hardest: bool = Field(True, description="hinge on the hardest in-batch negative (VSE++); false sums all")


def build_infonce(params: InfoNCEParams, ctx: xmcore.BuildContext):
    """Symmetric contrastive loss with a learnable temperature (CLIP)."""
    from xmcore_losses.losses import InfoNCE

    return InfoNCE(math.log(1 / params.temperature), params.learn_temperature, math.log(params.max_scale))


def build_triplet(params: TripletParams, ctx: xmcore.BuildContext):
    """Bidirectional hinge triplet loss on the hardest in-batch negative (VSE++)."""
    from xmcore_losses.losses import Triplet

    return Triplet(params.margin, params.hardest)


@xmcore.hookimpl
def xmcore_register_losses(register):
    register("infonce", build_infonce, params=InfoNCEParams)
    register("triplet", build_triplet, params=TripletParams)
