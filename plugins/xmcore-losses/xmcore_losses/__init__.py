"""Retrieval losses over a batch of matching pairs."""

from __future__ import annotations

import math

from pydantic import Field

import xmcore


class InfoNCEParams(xmcore.Params):
    temperature: float = Field(0.07, gt=0, description="initial temperature (CLIP: 0.07)")
    learn_temperature: bool = Field(True, description="learn the temperature (as a log-scale) with the model")
    max_scale: float = Field(100.0, gt=0, description="upper bound of the learned logit scale 1/temperature")
    group_positives: bool = Field(
        False,
        description="count every pair of the same group as a positive (supervised contrastive with "
        "loss.groups=label) instead of leaving them out of the negatives",
    )


class TripletParams(xmcore.Params):
    margin: float = Field(0.2, ge=0, description="hinge margin")
    hardest: bool = Field(True, description="hinge on the hardest in-batch negative (VSE++); false sums all")


def build_infonce(params: InfoNCEParams, ctx: xmcore.BuildContext):
    """Symmetric contrastive loss with a learnable temperature (CLIP)."""
    from xmcore_losses.losses import InfoNCE

    return InfoNCE(
        math.log(1 / params.temperature), params.learn_temperature, math.log(params.max_scale), params.group_positives
    )


def build_triplet(params: TripletParams, ctx: xmcore.BuildContext):
    """Bidirectional hinge triplet loss on the hardest in-batch negative (VSE++)."""
    from xmcore_losses.losses import Triplet

    return Triplet(params.margin, params.hardest)


class LabelCEParams(xmcore.Params):
    pass


def build_label_ce(params: LabelCEParams, ctx: xmcore.BuildContext):
    """A label classifier on the common space shared by both modalities (DSCMR, ACMR); needs class labels."""
    from xmcore.errors import XmcoreError
    from xmcore_losses.losses import LabelCE

    if ctx.num_classes is None:
        raise XmcoreError(
            "loss 'label-ce' classifies embeddings by class: set loss.groups=label, with a dataset that has "
            "class labels (csv or jsonl with label_column, imagefolder)"
        )
    return LabelCE(ctx.dim, ctx.num_classes)


@xmcore.hookimpl
def xmcore_register_losses(register):
    register("infonce", build_infonce, params=InfoNCEParams)
    register("triplet", build_triplet, params=TripletParams)
    register("label-ce", build_label_ce, params=LabelCEParams)
