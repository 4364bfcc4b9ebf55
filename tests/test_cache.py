"""The frozen-feature cache: hits for the same encoder and data, exact invalidation, no half-used entries."""

import torch

from xmcore.cache import cached_features, list_entries
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import build, run_cli

PLUGINS = load_plugins()


def encoder(**params):
    torch.manual_seed(0)
    return build(PLUGINS["encoder"].get("timm"), BuildContext(modality="image"), **params).eval()


def images(n=6, **params):
    data = build(PLUGINS["dataset"].get("shapes"), train=n, val=0, test=2, image_size=32, **params)
    return data.splits["train"].items["image"]


def features(root, enc, items, identity=None):
    from xmcore.features import encode_items

    identity = identity or {"encoder": "timm", "params": {"model_name": "test_resnet"}}
    return cached_features(root, identity, enc, items, lambda: encode_items(enc, items, batch_size=4))


def test_second_use_reads_the_cache_and_changes_make_new_keys(tmp_path):
    enc, items = encoder(), images()
    first, hit = features(tmp_path, enc, items)
    assert not hit and first.shape == (6, enc.output_dim)
    again, hit = features(tmp_path, enc, items)
    assert hit and torch.equal(first, again)

    assert not features(tmp_path, enc, images(seed=3))[1]  # other data
    assert not features(tmp_path, enc, items, {"encoder": "timm", "params": {"crop_pct": 0.5}})[1]  # other params
    other_weights = encoder()
    with torch.no_grad():
        next(other_weights.parameters()).add_(1.0)
    assert not features(tmp_path, other_weights, items)[1]  # other weights, same parameters
    assert not features(tmp_path, encoder(img_size=24), items)[1]  # other preprocessing
    assert len(list_entries(tmp_path)) == 5


def test_corrupted_or_partial_entries_are_rebuilt(tmp_path):
    enc, items = encoder(), images()
    first, _ = features(tmp_path, enc, items)
    (entry,) = [p for p in tmp_path.iterdir()]
    shard = entry / "part-0000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)
    rebuilt, hit = features(tmp_path, enc, items)
    assert not hit and torch.equal(rebuilt, first)
    (entry / "meta.json").unlink()  # as if the writer died before its last step
    assert not features(tmp_path, enc, items)[1]
    assert features(tmp_path, enc, items)[1]


def test_cache_cli(tmp_path):
    enc, items = encoder(), images()
    features(tmp_path, enc, items)
    listing = run_cli("cache", "ls", "--dir", tmp_path)
    assert listing.returncode == 0 and "1 entries" in listing.stdout and "timm" in listing.stdout
    cleared = run_cli("cache", "clear", "--dir", tmp_path)
    assert cleared.returncode == 0 and "removed 1 entries" in cleared.stdout
    assert list_entries(tmp_path) == []
