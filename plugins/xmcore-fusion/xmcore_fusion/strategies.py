"""Linear, nonlinear and adversarial fusion.

The adversarial strategy follows ACMR -- B. Wang, Y. Yang, X. Xu, A. Hanjalic,
H. T. Shen, "Adversarial Cross-Modal Retrieval", ACM MM 2017: MLP projections
and a modality discriminator that learns to tell which modality an embedding
came from, while the projections work to make the common space modality-
invariant.  What the projections optimise against the discriminator is the
``objective``; all three are here because the choice was made by measurement
(``bench/fusion.py``, ``tests/test_fusion.py``):

* ``feature-matching`` (default) -- T. Salimans et al., "Improved Techniques for
  Training GANs", NeurIPS 2016: the discriminator trains on detached embeddings;
  the projections minimise the distance between the modalities' mean activations
  at the discriminator's input and hidden layer, through a detached copy of its
  weights.  The input layer's term is the modality gap itself (Liang et al.,
  "Mind the Gap", NeurIPS 2022), the hidden layer's the statistics the
  discriminator finds telling.  Measured: the gap halves with R@1 unchanged and
  the discriminator ends at chance.
* ``confusion`` -- E. Tzeng et al., "Simultaneous Deep Transfer Across Domains
  and Tasks", ICCV 2015: the projections push the discriminator's output towards
  the uniform distribution.  Measured: the discriminator sits at chance on every
  batch while the modalities drift apart (the projections chase its boundary).
* ``reversal`` -- ACMR's form, gradient reversal (Ganin & Lempitsky, ICML 2015):
  the projections maximise the discriminator's cross-entropy.  Measured: they are
  rewarded for a confidently *wrong* discriminator, so the modalities swap sides
  and the gap widens 5-12x.

The projections' weight ramps as lambda = 2 / (1 + exp(-gamma * p)) - 1 with
training progress p, so the retrieval loss shapes the space first.
"""

from __future__ import annotations

import math
import typing
from typing import Mapping

import torch
from torch import nn

from xmcore.components import Fusion
from xmcore_fusion import AdversarialParams


class LinearFusion(Fusion):
    def __init__(self, input_dims: Mapping[str, int], dim: int, bias: bool = True):
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim, bias=bias) for m, d in input_dims.items()})

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        return self.proj[modality](features)


def mlp(d_in: int, hidden: int, d_out: int, layers: int, dropout: float) -> nn.Sequential:
    dims = [d_in] + [hidden] * (layers - 1)
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        blocks += [nn.Linear(a, b), nn.LayerNorm(b), nn.GELU(), nn.Dropout(dropout)]
    blocks.append(nn.Linear(dims[-1], d_out))
    return nn.Sequential(*blocks)


class MLPFusion(Fusion):
    def __init__(self, input_dims: Mapping[str, int], dim: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.proj = nn.ModuleDict({m: mlp(d, hidden, dim, layers, dropout) for m, d in input_dims.items()})

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        return self.proj[modality](features)


class GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


def reversal_strength(progress: float, gamma: float = 10.0) -> float:
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class AdversarialFusion(MLPFusion):
    """MLP projections and a modality discriminator; see the module docstring for the objectives."""

    def __init__(
        self,
        input_dims: Mapping[str, int],
        dim: int,
        hidden: int,
        layers: int,
        dropout: float,
        disc_hidden: int = 256,
        disc_weight: float = 1.0,
        gamma: float = 10.0,
        max_lambda: float = 3.0,
        objective: str = "feature-matching",
    ):
        super().__init__(input_dims, dim, hidden, layers, dropout)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.modalities = list(input_dims)
        self.discriminator = nn.Sequential(
            nn.Linear(dim, disc_hidden), nn.GELU(), nn.Linear(disc_hidden, len(self.modalities))
        )
        self.disc_weight = disc_weight
        self.gamma = gamma
        self.max_lambda = max_lambda
        self.objective = objective

    def auxiliary_loss(self, embeddings: Mapping[str, torch.Tensor], progress: float):
        strength = self.max_lambda * reversal_strength(progress, self.gamma)
        emb = torch.cat([embeddings[m] for m in self.modalities])
        target = torch.cat([torch.full((len(embeddings[m]),), k, dtype=torch.long, device=emb.device)
                            for k, m in enumerate(self.modalities)])
        if self.objective == "reversal":
            logits = self.discriminator(GradientReversal.apply(emb, strength))
            disc_loss = total = nn.functional.cross_entropy(logits, target)
        else:
            # The discriminator learns on detached embeddings; the projections see it through a detached
            # copy of its weights, so neither objective moves the other's parameters.
            logits = self.discriminator(emb.detach())
            disc_loss = nn.functional.cross_entropy(logits, target)
            weights = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            if self.objective == "confusion":
                fooled = torch.func.functional_call(self.discriminator, weights, (emb,))
                fool = nn.functional.cross_entropy(fooled, torch.full_like(fooled, 1.0 / len(self.modalities)))
            else:
                fool = self._feature_distance(embeddings, weights)
            total = disc_loss + strength * fool
        accuracy = (logits.argmax(dim=1) == target).float().mean()
        logs = {"disc_loss": disc_loss.detach(), "disc_acc": accuracy, "adv_lambda": torch.tensor(strength)}
        return self.disc_weight * total, logs

    def _feature_distance(self, embeddings: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Squared distance of each modality's mean activation from the modalities' common mean, summed over
        the discriminator's input (the embedding itself) and its hidden layer."""
        hidden = self.discriminator[:2]  # Linear + GELU
        hidden_weights = {k: v for k, v in weights.items() if k.startswith("0.")}
        layers = {m: [e, torch.func.functional_call(hidden, hidden_weights, (e,))] for m, e in embeddings.items()}
        total = 0.0
        for depth in range(2):
            means = torch.stack([layers[m][depth].mean(dim=0) for m in self.modalities])
            total = total + ((means - means.mean(dim=0)) ** 2).sum(dim=1).mean()
        return total


OBJECTIVES = typing.get_args(AdversarialParams.model_fields["objective"].annotation)
