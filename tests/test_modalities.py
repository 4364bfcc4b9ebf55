"""The core is general in modalities: splits of two or more, every direction among them, several pairs
trained into one space (losses summed), a subset chosen with data.modalities, clashing names refused."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, cli
from xmcore.data import LazyItem, Split, clean_split
from xmcore.embeddings import EmbeddingsFileError, load_embeddings, save_embeddings
from xmcore.evaluation import ModalityNameClash, compute_metrics, directions, rank_directions
from xmcore.testing import TINY_TRAINER

SPOKEN = ROOT / "recipes" / "spoken-shapes.yaml"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng); CI installs it")


def three(n=4, per=2):
    """A split of pictures, captions and spoken captions: member j of text and audio is one caption."""
    owner = np.repeat(np.arange(n), per)
    return Split(("image", "text", "audio"),
                 {"image": list(range(n)), "text": [f"caption {j}" for j in range(n * per)], "audio": list(range(n * per))},
                 owner)


def test_a_split_of_three_modalities_shares_one_owner_array():
    split = three()
    assert split.members == ("text", "audio")
    assert (split.groups("audio") == split.groups("text")).all() and (split.groups("image") == np.arange(4)).all()
    kept = split.subset(np.array([True, False, True, True]), np.ones(8, bool))
    assert kept.items["audio"] == [0, 1, 4, 5, 6, 7] and kept.owner.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="owner has 8 entries for 7 audio items"):
        Split(("image", "text", "audio"), {"image": [0], "text": list(range(8)), "audio": list(range(7))}, np.zeros(8))


def test_selecting_modalities_without_the_owners_keeps_relevance_by_picture():
    split = three()
    pair = split.select(["text", "audio"])
    assert pair.modalities == ("text", "audio") and pair.relevance == "label"
    # a spoken caption stays relevant to every caption of its picture, as in the full split
    assert (pair.groups("audio") == split.groups("audio")).all() and (pair.groups("text") == split.owner).all()
    assert split.select(["image", "audio"]).modalities == ("image", "audio")
    with pytest.raises(ValueError, match="owner modality 'image' first"):
        split.select(["audio", "image"])
    with pytest.raises(ValueError, match="two or more"):
        split.select(["audio", "video"])


def test_every_direction_is_ranked_with_ids_from_first_letters():
    split = three()
    g = torch.Generator().manual_seed(0)
    emb = {m: torch.randn(len(split.items[m]), 8, generator=g) for m in split.modalities}
    rankings = rank_directions(emb, split)
    assert list(rankings) == ["i2t", "t2i", "i2a", "a2i", "t2a", "a2t"]
    # text <-> audio relevance is by picture: a spoken caption's own caption and its sibling both count
    perfect = {"image": torch.eye(8)[:4], "text": torch.eye(8)[:4].repeat_interleave(2, 0),
               "audio": torch.eye(8)[:4].repeat_interleave(2, 0)}
    from xmcore.plugins import load_plugins

    recall = load_plugins()["metric"].get("recall")
    values = compute_metrics(rank_directions(perfect, split), [recall.build(recall.params(k=[1]), None)])
    assert all(values[f"{d}/R@1"] == 1.0 for d in ("i2t", "t2i", "i2a", "a2i", "t2a", "a2t")), values


def test_two_modalities_with_one_first_letter_are_refused():
    with pytest.raises(ModalityNameClash, match="'image' and 'infrared' start with the same letter.*rename one"):
        directions(["image", "text", "infrared"])


class Flaky(LazyItem):
    def __init__(self, ok):
        self.ok = ok

    def load(self):
        if not self.ok:
            raise OSError("cannot decode")
        return 0.0

    def __str__(self):
        return f"clip-{'ok' if self.ok else 'bad'}"


def test_clean_split_checks_lazy_members_and_drops_the_member_in_every_form():
    split = three()
    split.items["audio"] = [Flaky(j != 3) for j in range(8)]
    cleaned, report = clean_split(split)
    assert report["used"] == {"image": 4, "text": 7, "audio": 7}
    assert report["skipped"] == {"image": 0, "text": 0, "audio": 1}
    assert report["problems"][0]["item"] == "clip-bad of 1" and "cannot decode" in report["problems"][0]["reason"]
    assert "caption 3" not in cleaned.items["text"]  # its written form goes with it: members stay aligned


def test_embeddings_files_hold_three_modalities(tmp_path):
    split = three()
    emb = {m: np.random.default_rng(0).normal(size=(len(split.items[m]), 4)).astype("float32") for m in split.modalities}
    save_embeddings(tmp_path / "e.npz", emb, split)
    loaded = load_embeddings(tmp_path / "e.npz")
    assert loaded.split.modalities == ("image", "text", "audio")
    assert np.allclose(loaded.embeddings["audio"], emb["audio"])
    arrays = dict(np.load(tmp_path / "e.npz"))
    arrays["audio_to_image"] = arrays["audio_to_image"][::-1].copy()
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EmbeddingsFileError, match="'audio_to_image' differs from 'text_to_image'"):
        load_embeddings(tmp_path / "bad.npz")


# --------------------------------------------------------------------------- training several pairs


class Fixed(torch.nn.Module):
    def __init__(self, dim=4):
        super().__init__()
        self.w = torch.nn.Linear(dim, dim)

    def forward(self, x):
        return self.w(x)


def test_the_loss_is_summed_over_the_declared_pairs_and_trains_every_encoder():
    from xmcore.module import RetrievalModule

    class Identity(torch.nn.Module):
        def forward(self, x, modality):
            return x

        def auxiliary_loss(self, emb, progress):
            return None, {}

    calls = []

    def loss(a, b, g):
        calls.append((a.shape, b.shape))
        return (a * b).sum(dim=1).mean()

    encoders = {m: Fixed() for m in ("image", "text", "audio")}
    module = RetrievalModule(encoders, Identity(), loss, ("image", "text", "audio"), optimizer={})
    assert module.pairs == [("image", "text"), ("image", "audio")]
    batch = {m: torch.randn(5, 4) for m in ("image", "text", "audio")} | {"group": torch.arange(5)}
    emb = {m: module.embed(m, batch[m]) for m in module.modalities}
    total, _ = module.pair_loss(emb, batch["group"])
    assert torch.allclose(total, loss(emb["image"], emb["text"], None) + loss(emb["image"], emb["audio"], None))
    total.backward()
    assert all(e.w.weight.grad is not None and e.w.weight.grad.abs().sum() > 0 for e in encoders.values())
    module = RetrievalModule({m: Fixed() for m in ("text", "audio")}, Identity(), loss, ("text", "audio"),
                             optimizer={}, pairs=[("text", "audio")])
    assert module.pairs == [("text", "audio")]


@needs_espeak
def test_spoken_shapes_is_three_aligned_modalities():
    from xmcore.plugins import load_plugins
    from xmcore.testing import build, check_dataset

    component = load_plugins()["dataset"].get("spoken-shapes")
    check_dataset(component, train=4, val=0, test=2, image_size=32, captions_per_image=2)
    data = build(component, train=4, val=0, test=2, image_size=32, captions_per_image=2)
    split = data.splits["train"]
    clip = split.items["audio"][0].load()
    assert clip.sample_rate == 16000 and 0.5 < clip.seconds < 6
    again = build(component, train=4, val=0, test=2, image_size=32, captions_per_image=2)
    assert [a.path for a in again.splits["train"].items["audio"]] == [a.path for a in split.items["audio"]]


@needs_espeak
def test_three_modalities_train_two_pairs_and_report_every_direction(tmp_path, capfd):
    """data.modalities=null: image<->text and image<->speech trained, text<->speech evaluated too."""
    tiny = [*TINY_TRAINER, "data.train=8", "data.val=4", "data.test=4", "data.image_size=32",
            "data.captions_per_image=2", "encoders.image.img_size=32", "encoders.audio.n_mels=16", "data.batch_size=8"]
    result = cli(capfd, "run", SPOKEN, *tiny, "data.modalities=null", "--out", tmp_path / "three")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "three" / "metrics.json").read_text())
    assert {k.split("/")[0] for k in metrics if "/R@10" in k} == {"i2t", "t2i", "i2a", "a2i", "t2a", "a2t"}
    assert {"i-t/gap", "i-a/gap", "t-a/gap", "gap"} <= set(metrics)
    log = (tmp_path / "three" / "logs" / "metrics.csv").read_text()
    assert "train/retrieval_loss" in log

    # one pair, chosen without the owners: text <-> speech trained directly
    result = cli(capfd, "run", SPOKEN, *tiny, "data.modalities=[text,audio]", "--out", tmp_path / "direct")
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(json.loads((tmp_path / "direct" / "metrics.json").read_text())) >= {"t2a/R@10", "a2t/R@10"}

    result = cli(capfd, "run", SPOKEN, *tiny, "data.modalities=null", "loss.pairs=[[image,text]]", "--out", tmp_path / "x")
    assert result.returncode == 2 and "loss.pairs: audio is in no pair" in result.stderr
    result = cli(capfd, "run", SPOKEN, *tiny, "loss.pairs=[[image,video]]", "--out", tmp_path / "y")
    assert result.returncode == 2 and "loss.pairs: [image, video]" in result.stderr and "no video" in result.stderr
