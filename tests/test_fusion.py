"""Each fusion strategy does what its name promises, measured on fixed features.

Two "encoders" are stand-ins with fixed outputs: image and text features are two different
linear views of one shared latent, plus noise and a modality-specific offset.  The real fusion
plugins and the real InfoNCE loss train on them with a plain optimiser loop (a few seconds),
so the tests can compare what the strategies do to the common space.
"""

import functools

import pytest
import torch

from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import build

PLUGINS = load_plugins()
DIMS = {"image": 24, "text": 16}


def fixed_features(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    views = torch.Generator().manual_seed(1234)  # the same "encoders" for every sample drawn
    w_image, w_text = torch.randn(8, DIMS["image"], generator=views), torch.randn(8, DIMS["text"], generator=views)
    offset_image, offset_text = 3 * torch.randn(DIMS["image"], generator=views), 3 * torch.randn(DIMS["text"], generator=views)
    z = torch.randn(n, 8, generator=g)
    image = z @ w_image + offset_image + 0.3 * torch.randn(n, DIMS["image"], generator=g)
    text = z @ w_text + offset_text + 0.3 * torch.randn(n, DIMS["text"], generator=g)
    return image, text


@functools.cache
def train_fusion(name: str, steps: int = 300, **params):
    """Train a fusion strategy with InfoNCE on fixed features; its modality gap and discriminator accuracy
    on held-out features (the discriminator's accuracy is ``None`` for strategies without one)."""
    torch.manual_seed(0)
    # A low starting temperature keeps the gap the random projections start with (Liang et al. 2022),
    # so there is a gap to close.
    fusion = build(PLUGINS["fusion"].get(name), BuildContext(input_dims=DIMS, dim=64), hidden=64, **params)
    loss = build(PLUGINS["loss"].get("infonce"), BuildContext(dim=64), temperature=0.02)
    opt = torch.optim.AdamW([*fusion.parameters(), *loss.parameters()], lr=3e-3)
    image, text = fixed_features(4096, seed=0)
    for step in range(steps):
        idx = torch.randint(0, len(image), (128,))
        emb = {m: torch.nn.functional.normalize(fusion(x[idx], m), dim=-1) for m, x in (("image", image), ("text", text))}
        total = loss(emb["image"], emb["text"], idx)
        aux, _ = fusion.auxiliary_loss(emb, progress=step / steps)
        if aux is not None:
            total = total + aux
        opt.zero_grad()
        total.backward()
        opt.step()
    fusion.eval()
    with torch.no_grad():
        held_image, held_text = fixed_features(4096, seed=1)
        emb = {"image": torch.nn.functional.normalize(fusion(held_image, "image"), dim=-1),
               "text": torch.nn.functional.normalize(fusion(held_text, "text"), dim=-1)}
        gap = float((emb["image"].mean(0) - emb["text"].mean(0)).norm())
        recall = float(((emb["image"] @ emb["text"].T).argmax(1) == torch.arange(len(held_image))).float().mean())
        disc_acc = None
        if hasattr(fusion, "discriminator"):
            _, logs = fusion.auxiliary_loss(emb, progress=1.0)
            disc_acc = float(logs["disc_acc"])
    return gap, disc_acc, recall


def test_adversarial_closes_the_modality_gap_with_a_discriminator_at_chance():
    gap_nonlinear, _, recall_nonlinear = train_fusion("nonlinear")
    gap_adversarial, disc_acc, recall_adversarial = train_fusion("adversarial")
    assert gap_adversarial < 0.5 * gap_nonlinear, (gap_adversarial, gap_nonlinear)
    assert 0.3 <= disc_acc <= 0.7, disc_acc  # near chance: neither telling the modalities apart nor swapping them
    assert recall_adversarial > recall_nonlinear - 0.05, (recall_adversarial, recall_nonlinear)


@pytest.mark.xfail(strict=True, reason="the domain-confusion loss (Tzeng et al. 2015) holds the discriminator near "
                   "chance on each batch while the modalities drift apart: the projections chase its boundary")
def test_confusion_objective_alone_does_not_close_the_gap():
    gap_nonlinear, _, _ = train_fusion("nonlinear")
    gap_confusion, disc_acc, _ = train_fusion("adversarial", objective="confusion")
    assert gap_confusion < gap_nonlinear and 0.3 <= disc_acc <= 0.7, (gap_confusion, gap_nonlinear, disc_acc)


@pytest.mark.xfail(strict=True, reason="ACMR's plain gradient reversal rewards a confidently wrong discriminator "
                   "(the modalities swap sides) instead of one at chance; kept as objective=reversal for comparison")
def test_gradient_reversal_alone_does_not_confuse_the_discriminator():
    gap_nonlinear, _, _ = train_fusion("nonlinear")
    gap_reversal, disc_acc, _ = train_fusion("adversarial", objective="reversal")
    assert gap_reversal < 0.5 * gap_nonlinear and 0.3 <= disc_acc <= 0.7, (gap_reversal, gap_nonlinear, disc_acc)


def test_report_draws_the_gap_and_the_discriminator_over_training(tmp_path):
    from xmcore.report import modality_curves

    log = tmp_path / "metrics.csv"
    log.write_text("step,train/loss,train/disc_acc,val/disc_acc,val/gap\n"
                   "9,3.1,0.9,,\n19,2.5,0.6,,\n19,,,0.55,0.21\n39,,,0.5,0.08\n")
    assert modality_curves(log, tmp_path / "modality.png") == "modality.png"
    assert (tmp_path / "modality.png").stat().st_size > 1000
    plain = tmp_path / "plain.csv"
    plain.write_text("step,train/loss,val/loss\n9,3.1,\n19,,2.9\n")
    assert modality_curves(plain, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
