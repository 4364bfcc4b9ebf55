"""Fusion strategies: how image and text features reach one common embedding space.

The three families of the seed survey: linear (a projection per modality),
nonlinear (an MLP per modality) and adversarial (MLPs plus a modality
discriminator whose features the modalities are trained to match, after ACMR).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import xmcore


class LinearParams(xmcore.Params):
    bias: bool = Field(True, description="add a bias to each projection")


class NonlinearParams(xmcore.Params):
    hidden: int = Field(512, gt=0, description="width of the hidden layers")
    layers: int = Field(2, ge=2, description="linear layers per modality (>= 2)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout after each hidden layer")


class AdversarialParams(NonlinearParams):
    disc_hidden: int = Field(256, gt=0, description="width of the modality discriminator's hidden layer")
    disc_weight: float = Field(1.0, ge=0, description="weight of the discriminator loss in the total loss")
    gamma: float = Field(10.0, gt=0, description="steepness of the lambda schedule 2/(1+exp(-gamma*p))-1")
    max_lambda: float = Field(
        3.0, ge=0, description="weight of the projections' objective against the discriminator at the end of training "
        "(bench/fusion.py: 1 closes too little of the gap, 5 and more cost R@1)",
    )
    objective: Literal["feature-matching", "confusion", "reversal"] = Field(
        "feature-matching",
        description="what the projections are trained for: to match the discriminator's mean features across "
        "modalities (feature-matching), to drive it to chance (confusion), or to make it err through "
        "gradient reversal (reversal, ACMR's original form)",
    )


def build_linear(params: LinearParams, ctx: xmcore.BuildContext):
    """A linear projection per modality into the common space."""
    from xmcore_fusion.strategies import LinearFusion

    return LinearFusion(ctx.input_dims, ctx.dim, bias=params.bias)


def build_nonlinear(params: NonlinearParams, ctx: xmcore.BuildContext):
    """An MLP per modality into the common space."""
    from xmcore_fusion.strategies import MLPFusion

    return MLPFusion(ctx.input_dims, ctx.dim, params.hidden, params.layers, params.dropout)


def build_adversarial(params: AdversarialParams, ctx: xmcore.BuildContext):
    """MLPs plus a modality discriminator the projections work against (ACMR); closes the modality gap."""
    from xmcore_fusion.strategies import AdversarialFusion

    return AdversarialFusion(
        ctx.input_dims,
        ctx.dim,
        params.hidden,
        params.layers,
        params.dropout,
        disc_hidden=params.disc_hidden,
        disc_weight=params.disc_weight,
        gamma=params.gamma,
        max_lambda=params.max_lambda,
        objective=params.objective,
    )


@xmcore.hookimpl
def xmcore_register_fusions(register):
    register("linear", build_linear, params=LinearParams)
    register("nonlinear", build_nonlinear, params=NonlinearParams)
    register("adversarial", build_adversarial, params=AdversarialParams)
