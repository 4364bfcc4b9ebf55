"""Linear, nonlinear and adversarial fusion.

The adversarial strategy follows ACMR -- B. Wang, Y. Yang, X. Xu, A. Hanjalic,
H. T. Shen, "Adversarial Cross-Modal Retrieval", ACM MM 2017 -- in its
gradient-reversal form (Ganin & Lempitsky, "Unsupervised Domain Adaptation by
Backpropagation", ICML 2015): a discriminator learns to tell which modality an
embedding came from, and the reversed gradient pushes the projections to make
that impossible, so the common space becomes modality-invariant.  The reversal
strength ramps as lambda = 2 / (1 + exp(-gamma * p)) - 1 with training progress p.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from xmcore.components import Fusion


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
        max_lambda: float = 1.0,
    ):
        super().__init__(input_dims, dim, hidden, layers, dropout)
        self.modalities = list(input_dims)
        self.discriminator = nn.Sequential(
            nn.Linear(dim, disc_hidden), nn.GELU(), nn.Linear(disc_hidden, len(self.modalities))
        )
        self.disc_weight = disc_weight
        self.gamma = gamma
        self.max_lambda = max_lambda

    def auxiliary_loss(self, embeddings: Mapping[str, torch.Tensor], progress: float):
        strength = self.max_lambda * reversal_strength(progress, self.gamma)
        feats, targets = [], []
        for label, modality in enumerate(self.modalities):
            emb = embeddings[modality]
            feats.append(GradientReversal.apply(emb, strength))
            targets.append(torch.full((len(emb),), label, dtype=torch.long, device=emb.device))
        logits = self.discriminator(torch.cat(feats))
        target = torch.cat(targets)
        loss = nn.functional.cross_entropy(logits, target)
        accuracy = (logits.argmax(dim=1) == target).float().mean()
        logs = {"disc_loss": loss.detach(), "disc_acc": accuracy, "grl_lambda": torch.tensor(strength)}
        return self.disc_weight * loss, logs
