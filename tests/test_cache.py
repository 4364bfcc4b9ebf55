"""The frozen-feature cache: hits for the same encoder and data, exact invalidation, no half-used entries."""

import os
from pathlib import Path

import torch

from conftest import cli, write_image
from xmcore.cache import cached_features, list_entries
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import build

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


def count_calls(enc):
    """The items the encoder is run on, counted by a forward hook on the real module."""
    seen = []
    enc.register_forward_hook(lambda module, args, output: seen.append(len(output)))
    return seen


def test_second_use_reads_the_cache_and_changes_make_new_keys(tmp_path):
    enc, items = encoder(), images()
    calls = count_calls(enc)
    first, hit = features(tmp_path, enc, items)
    assert not hit and first.shape == (6, enc.output_dim) and sum(calls) == 6
    again, hit = features(tmp_path, enc, items)
    assert hit and torch.equal(first, again)
    assert sum(calls) == 6  # read, not encoded again

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


def test_a_changed_file_invalidates_its_entry(tmp_path):
    """Items read from disk are keyed by path, size and mtime: a file changed in place is encoded again."""
    from xmcore.data import ImageFile

    enc = encoder()
    calls = count_calls(enc)
    paths = [write_image(tmp_path / "img" / f"{i}.png", colour) for i, colour in enumerate(("red", "green", "blue"))]
    items = [ImageFile(p) for p in paths]
    cache = tmp_path / "cache"
    first, hit = features(cache, enc, items)
    assert not hit and features(cache, enc, items)[1] and sum(calls) == 3  # unchanged files: read back

    stat = paths[1].stat()  # the same bytes, touched
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched, hit = features(cache, enc, items)
    assert not hit and sum(calls) == 6 and torch.equal(touched, first)

    write_image(paths[2], "yellow", size=40)  # another picture, another size
    changed, hit = features(cache, enc, items)
    assert not hit and sum(calls) == 9
    assert torch.equal(changed[:2], first[:2]) and not torch.allclose(changed[2], first[2])
    assert features(cache, enc, items)[1] and sum(calls) == 9
    assert len(list_entries(cache)) == 3


def test_cache_cli(tmp_path, capfd):
    enc, items = encoder(), images()
    features(tmp_path, enc, items)
    listing = cli(capfd, "cache", "ls", "--dir", tmp_path)
    assert listing.returncode == 0 and "1 entries" in listing.stdout and "timm" in listing.stdout
    cleared = cli(capfd, "cache", "clear", "--dir", tmp_path)
    assert cleared.returncode == 0 and "removed 1 entries" in cleared.stdout
    assert list_entries(tmp_path) == []


def test_partial_folders_carry_the_host_and_only_this_hosts_pids_are_judged(tmp_path, monkeypatch):
    """A cache shared between machines (NFS): another host's partial folder is in use until it is
    ``ABANDONED_AFTER_S`` old, whatever its pid means here; this host's are judged by their pid."""
    import socket
    import subprocess
    import sys
    import time

    from xmcore import cache

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    host = cache._host()
    assert host == socket.gethostname().replace("/", "_")
    entry = tmp_path / "0123abcd"
    planted = {
        "other-fresh": entry.with_name(f"{entry.name}.partial-other-host.example-{dead}"),
        "other-old": entry.with_name(f"{entry.name}.partial-other-host.example-{os.getpid()}"),
        "mine-dead": entry.with_name(f"{entry.name}.partial-{host}-{dead}"),
        "mine-alive": entry.with_name(f"{entry.name}.partial-{host}-{os.getppid()}"),
        "old-style-dead": entry.with_name(f"{entry.name}.partial-{dead}"),
    }
    for folder in planted.values():
        folder.mkdir()
        (folder / "part-0000.safetensors").write_bytes(b"half")
    long_ago = time.time() - cache.ABANDONED_AFTER_S - 60
    for path in (planted["other-old"] / "part-0000.safetensors", planted["other-old"]):
        os.utime(path, (long_ago, long_ago))

    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(Path(src).name), replace(src, dst))[1])
    cache.write_entry(entry, torch.ones(3, 2), {"encoder": "fixed"})
    assert renamed[-1] == f"{entry.name}.partial-{host}-{os.getpid()}"  # the entry's rename, after meta.json's
    left = {name for name, folder in planted.items() if folder.exists()}
    assert left == {"other-fresh", "mine-alive"}
    assert cache.read_entry(entry, 3) is not None
