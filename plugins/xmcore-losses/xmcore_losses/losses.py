"""Contrastive retrieval losses.

* ``InfoNCE`` -- the symmetric cross-entropy over in-batch similarities of CLIP:
  A. Radford et al., "Learning Transferable Visual Models From Natural Language
  Supervision", ICML 2021 (learned logit scale, clamped at 100).
* ``Triplet`` -- the hinge loss on the hardest in-batch negative of VSE++:
  F. Faghri et al., "VSE++: Improving Visual-Semantic Embeddings with Hard
  Negatives", BMVC 2018.

Both take ``groups``: pairs of the same group (two captions of one image in
the batch) are never used as each other's negatives.
"""

from __future__ import annotations

import torch
from torch import nn


def _same_group_off_diagonal(groups: torch.Tensor) -> torch.Tensor:
    same = groups[:, None] == groups[None, :]
    return same & ~torch.eye(len(groups), dtype=torch.bool, device=groups.device)


class InfoNCE(nn.Module):
    def __init__(self, init_log_scale: float, learnable: bool = True, max_log_scale: float = 4.6052):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(init_log_scale)), requires_grad=learnable)
        self.max_log_scale = max_log_scale

    def forward(self, a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        scale = self.log_scale.clamp(max=self.max_log_scale).exp()
        logits = scale * a @ b.T
        logits = logits.masked_fill(_same_group_off_diagonal(groups), float("-inf"))
        target = torch.arange(len(a), device=a.device)
        return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))


class Triplet(nn.Module):
    def __init__(self, margin: float = 0.2, hardest: bool = True):
        super().__init__()
        self.margin = margin
        self.hardest = hardest

    def forward(self, a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        scores = a @ b.T
        positive = scores.diag()
        same_group = groups[:, None] == groups[None, :]  # the diagonal included: never a negative
        cost_b = (self.margin + scores - positive[:, None]).clamp(min=0).masked_fill(same_group, 0)
        cost_a = (self.margin + scores - positive[None, :]).clamp(min=0).masked_fill(same_group, 0)
        if self.hardest:
            return cost_b.max(dim=1).values.mean() + cost_a.max(dim=0).values.mean()
        return cost_b.sum(dim=1).mean() + cost_a.sum(dim=0).mean()
