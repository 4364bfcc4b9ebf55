"""Contrastive retrieval losses.

* ``InfoNCE`` -- the symmetric cross-entropy over in-batch similarities of CLIP:
  A. Radford et al., "Learning Transferable Visual Models From Natural Language
  Supervision", ICML 2021 (learned logit scale, clamped at 100).
* ``Triplet`` -- the hinge loss on the hardest in-batch negative of VSE++:
  F. Faghri et al., "VSE++: Improving Visual-Semantic Embeddings with Hard
  Negatives", BMVC 2018.

Both take ``groups``: pairs of the same group (two captions of one image in
the batch) are never used as each other's negatives.  InfoNCE can also count
them as positives: with ``groups`` from class labels that is the supervised
contrastive loss of P. Khosla et al., "Supervised Contrastive Learning",
NeurIPS 2020, across modalities.

* ``LabelCE`` -- a linear label classifier on the common space, shared by both
  modalities, trained with cross-entropy on the class of each embedding: the
  label-space objective of DSCMR (L. Zhen, P. Hu, X. Wang, D. Peng, "Deep
  Supervised Cross-Modal Retrieval", CVPR 2019) and of ACMR's label classifier.
"""

from __future__ import annotations

import torch
from torch import nn


def _same_group_off_diagonal(groups: torch.Tensor) -> torch.Tensor:
    same = groups[:, None] == groups[None, :]
    return same & ~torch.eye(len(groups), dtype=torch.bool, device=groups.device)


class InfoNCE(nn.Module):
    def __init__(
        self, init_log_scale: float, learnable: bool = True, max_log_scale: float = 4.6052, group_positives: bool = False
    ):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(init_log_scale)), requires_grad=learnable)
        self.max_log_scale = max_log_scale
        self.group_positives = group_positives

    def forward(self, a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        scale = self.log_scale.clamp(max=self.max_log_scale).exp()
        logits = scale * a @ b.T
        if self.group_positives:
            # Every pair of the group is a positive: the target spreads evenly over them.
            same = (groups[:, None] == groups[None, :]).float()
            target = same / same.sum(dim=1, keepdim=True)
            return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))
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


class LabelCE(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        known = groups >= 0  # items without a known class carry a negative id and are left out
        if not known.any():
            return (a.sum() + b.sum()) * 0.0
        a, b, groups = a[known], b[known], groups[known]
        return 0.5 * (nn.functional.cross_entropy(self.classifier(a), groups)
                      + nn.functional.cross_entropy(self.classifier(b), groups))
