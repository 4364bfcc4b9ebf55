"""Every checkpoint, cache and index file is read without running code, and a changed byte is noticed.

For each loader: a file with a flipped byte is refused by its checksum with a message naming it (exit 2,
no traceback), or -- the feature cache -- noticed and rebuilt; a file carrying a pickled call (``open``
creating a marker file, as an attack would call anything) is refused and the call never runs.  A static
check keeps every ``torch.load``, ``np.load``, ``yaml.load`` and Lightning ``ckpt_path`` in xmcore and its
plugins safe.
"""

import ast
import importlib
import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, cli
from xmcore.errors import XmcoreError
from xmcore.io import file_sha256
from xmcore.safeload import check_archive, load_weights


class Payload:
    """Unpickled without ``weights_only``, this calls ``open(marker, "w")`` (pickled as ``io.open``): a file appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def flip_byte(path: Path, member: str | None = None) -> None:
    """Flip one byte in the middle of ``path``, or in the middle of the data of its largest zip member
    (of ``member``), so that the archive itself stays readable."""
    data = bytearray(path.read_bytes())
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if member is None or i.filename.endswith(member)]
        info = max(infos, key=lambda i: i.file_size)
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        offset = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    else:
        offset = len(data) // 2
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def evil_torch_file(path: Path, marker: Path, like: Path | None = None) -> Path:
    """A torch file holding ``like``'s content (or a small state dict) plus a :class:`Payload`."""
    content = torch.load(like, map_location="cpu", weights_only=True) if like else {"w": torch.zeros(3)}
    torch.save({**content, "extra": Payload(marker)}, path)
    return path


# ------------------------------------------------------------------------------------------ torch files


def test_load_weights_checks_the_archive_then_loads_weights_only(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}}, good)
    assert torch.equal(load_weights(good)["state_dict"]["w"], torch.arange(1000.0))

    flipped = tmp_path / "flipped.pt"
    shutil.copy(good, flipped)
    flip_byte(flipped)
    assert not torch.equal(torch.load(flipped, weights_only=True)["state_dict"]["w"], torch.arange(1000.0))  # torch: silent
    with pytest.raises(XmcoreError, match=r"flipped.pt \(a test\): member good/data/0 does not match its checksum"):
        load_weights(flipped, "a test")

    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(XmcoreError, match="cut.pt: not a complete torch file .*cut short"):
        load_weights(cut)

    marker = tmp_path / "marker"
    evil = evil_torch_file(tmp_path / "evil.pt", marker)
    with pytest.raises(XmcoreError, match=r"evil.pt: holds a Python object \(io.open\), not only weights; .*"
                                          r"weights_only=True"):
        load_weights(evil)
    assert not marker.exists()


def test_a_legacy_torch_file_of_someone_else_loads_only_when_allowed(tmp_path):
    legacy = tmp_path / "old.pth"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_weights(legacy, legacy_ok=True)["w"], torch.ones(2))
    with pytest.raises(XmcoreError, match="not a complete torch file"):
        load_weights(legacy)  # xmcore writes zip archives: one that is not was replaced


@pytest.fixture
def run_checkpoint(trained_run_copy):
    from xmcore.run import best_checkpoint

    return trained_run_copy, best_checkpoint(trained_run_copy)


def test_a_changed_checkpoint_is_refused_by_evaluate(run_checkpoint, capfd):
    run, checkpoint = run_checkpoint
    flip_byte(checkpoint)
    result = cli(capfd, "evaluate", run)
    assert result.returncode == 2
    assert f"{checkpoint} (a checkpoint): member" in result.stderr and "does not match its checksum" in result.stderr


def test_a_refused_checkpoint_leaves_no_evaluation_folder_but_keeps_a_users_out(run_checkpoint, tmp_path, capfd):
    run, checkpoint = run_checkpoint
    flip_byte(checkpoint)
    before = set((run / "evaluations").iterdir()) if (run / "evaluations").is_dir() else set()
    result = cli(capfd, "evaluate", run)
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if not line.startswith("note:")]
    assert len(error) == 1 and error[0].startswith(f"error: {checkpoint} (a checkpoint)"), result.stderr
    after = set((run / "evaluations").iterdir()) if (run / "evaluations").is_dir() else set()
    assert after == before
    existing = tmp_path / "mine"
    existing.mkdir()
    assert cli(capfd, "evaluate", run, "--out", existing).returncode == 2
    assert existing.is_dir()  # the user's own folder, though empty, is theirs


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(run_checkpoint, tmp_path, capfd):
    run, checkpoint = run_checkpoint
    marker = tmp_path / "marker"
    evil_torch_file(checkpoint, marker, like=checkpoint)
    for command in (["evaluate", run], ["index", run, "--out", tmp_path / "index"]):
        result = cli(capfd, *command)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "holds a Python object (io.open), not only weights" in result.stderr
    assert not marker.exists() and not (tmp_path / "index" / "manifest.json").exists()
    api = pytest.raises(XmcoreError, match=r"io.open")
    with api:
        import xmcore

        xmcore.load(run)
    assert not marker.exists()


def test_resume_refuses_a_changed_last_checkpoint_before_training(run_checkpoint, capfd):
    run, _ = run_checkpoint
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    flip_byte(last)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    result = cli(capfd, "run", run / "recipe.yaml", "--out", run, "--resume")
    assert result.returncode == 2
    assert "the checkpoint --resume continues from" in result.stderr and "does not match its checksum" in result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_lightning_is_asked_for_weights_only(run_checkpoint, monkeypatch, tmp_path):
    """The resumed fit and the final evaluation load their checkpoint through Lightning: with weights_only=True."""
    import pytorch_lightning as pl

    seen = []
    for name in ("fit", "predict"):
        original = getattr(pl.Trainer, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            seen.append((_name, kwargs.get("ckpt_path") is not None, kwargs.get("weights_only")))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(pl.Trainer, name, spy)
    from xmcore.plugins import load_plugins
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import train_and_evaluate

    run, _ = run_checkpoint
    loaded = load_recipe(run / "recipe.yaml", ["trainer.max_epochs=2"])
    train_and_evaluate(validate(loaded, load_plugins()), load_plugins(), loaded.base_dir, run, resume=True)
    assert ("fit", True, True) in seen and ("predict", True, True) in seen


def test_an_image_encoder_checkpoint_carrying_code_is_refused(tmp_path):
    from xmcore.plugins import load_plugins
    from xmcore.registry import BuildContext

    component = load_plugins()["encoder"].get("timm")
    marker = tmp_path / "marker"
    evil = evil_torch_file(tmp_path / "evil.pth", marker)
    params = component.params.model_validate({"model_name": "test_resnet", "checkpoint": str(evil)})
    with pytest.raises(XmcoreError, match=r"evil.pth \(encoders.image.checkpoint\): holds a Python object \(io.open\)"):
        component.build(params, BuildContext(base_dir=tmp_path, modality="image"))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ index folder


@pytest.fixture
def index_copy(gallery_index, tmp_path):
    return Path(shutil.copytree(gallery_index, tmp_path / "index"))


@pytest.mark.parametrize("member", ["model/weights.pt", "model/recipe.yaml", "faiss/image.index", "metadata/image.jsonl"])
def test_a_changed_index_file_is_refused_by_its_checksum(index_copy, member, capfd):
    flip_byte(index_copy / member)
    result = cli(capfd, "search", index_copy, "--text", "a red square")
    assert result.returncode == 2
    assert f"1 files differ from the manifest ({member}); the index is damaged" in result.stderr


def test_add_refuses_a_changed_faiss_index_before_extending_it(index_copy, trained_run, capfd):
    flip_byte(index_copy / "faiss" / "image.index")
    before = (index_copy / "manifest.json").read_bytes()
    result = cli(capfd, "index", trained_run, "--out", index_copy, "--add", "--split", "val")
    assert result.returncode == 2
    assert "--add: " in result.stderr and "files differ from the manifest (faiss/image.index)" in result.stderr
    assert (index_copy / "manifest.json").read_bytes() == before


def test_an_index_model_carrying_code_is_refused_though_the_manifest_was_rewritten(index_copy, tmp_path, capfd):
    marker = tmp_path / "marker"
    weights = index_copy / "model" / "weights.pt"
    evil_torch_file(weights, marker, like=weights)
    manifest = json.loads((index_copy / "manifest.json").read_text())
    manifest["checksums"]["model/weights.pt"] = file_sha256(weights)  # an attacker who rewrites the manifest too
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    result = cli(capfd, "search", index_copy, "--text", "a red square")
    assert result.returncode == 2
    assert "weights.pt (the index's model): holds a Python object (io.open)" in result.stderr
    assert not marker.exists()


def test_an_index_embeddings_shard_is_checked_and_never_unpickled(index_copy):
    from xmcore.search import verify

    shard = sorted((index_copy / "embeddings").glob("*.npy"))[0]
    assert verify(index_copy) == []
    np.save(shard, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert verify(index_copy) == [str(shard.relative_to(index_copy))]
    with pytest.raises(ValueError, match="allow_pickle=False"):
        np.load(shard)  # the default every index reader relies on (numpy >= 1.16.3)


# ------------------------------------------------------------------------------------------ feature cache


def test_a_changed_cache_entry_is_noticed_and_encoded_again(tmp_path, capfd):
    from xmcore.cache import cached_features

    encoder = torch.nn.Linear(2, 3)
    items = ["a red square", "a blue circle"]
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(2, 3)

    first, hit = cached_features(tmp_path, {"encoder": "test"}, encoder, items, compute)
    assert not hit and len(calls) == 1
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    shard = next(entry.glob("*.safetensors"))
    for tamper in (lambda: flip_byte(shard),
                   lambda: torch.save({"features": Payload(tmp_path / "marker")}, shard),
                   lambda: (entry / "meta.json").write_text("{")):
        tamper()
        capfd.readouterr()
        again, hit = cached_features(tmp_path, {"encoder": "test"}, encoder, items, compute)
        assert not hit and torch.equal(again, first)
        assert f"note: feature cache entry {entry} is incomplete or damaged" in capfd.readouterr().err
        shard = next(entry.glob("*.safetensors"))
    assert len(calls) == 4 and not (tmp_path / "marker").exists()
    assert cached_features(tmp_path, {"encoder": "test"}, encoder, items, compute)[1]  # whole again: read


# ------------------------------------------------------------------------------------------ embeddings files


def embeddings_npz(path: Path, **extra) -> Path:
    arrays = {"image": np.eye(4, 8, dtype=np.float32), "text": np.eye(4, 8, dtype=np.float32),
              "text_to_image": np.arange(4), **extra}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


def test_an_embeddings_file_is_checked_and_never_unpickled(tmp_path, capfd):
    from xmcore.embeddings import load_embeddings

    good = embeddings_npz(tmp_path / "good.npz")
    assert load_embeddings(good).split.owner.tolist() == [0, 1, 2, 3]
    flipped = tmp_path / "flipped.npz"
    shutil.copy(good, flipped)
    flip_byte(flipped, "image.npy")
    with pytest.raises(XmcoreError, match=r"flipped.npz: array 'image' cannot be read \(BadZipFile: Bad CRC-32.*damaged"):
        load_embeddings(flipped)
    evil = embeddings_npz(tmp_path / "evil.npz", image_labels=np.array([Payload(tmp_path / "marker")] * 4, dtype=object))
    result = cli(capfd, "evaluate", "--embeddings", evil, "--out", tmp_path / "out")
    assert result.returncode == 2 and "array 'image_labels' holds Python objects (dtype=object)" in result.stderr
    assert not (tmp_path / "marker").exists()


# ------------------------------------------------------------------------------------------ every loader


def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func), {k.arg: k.value for k in node.keywords}


def _module(path: Path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[2:] if parts[0] == "plugins" else parts
    return importlib.import_module(".".join(p for p in parts if p != "__init__"))


SOURCES = sorted([*ROOT.glob("xmcore/**/*.py"), *ROOT.glob("plugins/*/xmcore_*/**/*.py")])
ALLOWED = {("xmcore/testing.py", "pickle.loads")}  # a round trip of a preprocessor the test itself pickled


def test_every_loader_in_xmcore_and_its_plugins_is_safe():
    """No pickle, marshal or unsafe YAML; torch.load with weights_only=True; np.load never allows pickles;
    a Lightning checkpoint (ckpt_path) is loaded with weights_only=True; no eval or exec."""
    import yaml

    problems, loaders = [], 0
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        for node, func, kw in _calls(path):
            where = f"{rel}:{node.lineno}: {func}"
            if (rel, func) in ALLOWED:
                continue
            module, _, name = func.rpartition(".")
            if (module in ("pickle", "marshal", "dill", "joblib", "shelve", "cloudpickle")
                    and name in ("load", "loads", "Unpickler", "open")) or func in (
                    "eval", "exec", "torch.jit.load", "yaml.unsafe_load", "yaml.full_load"):
                problems.append(f"{where} can run code")
            elif func == "torch.load":
                loaders += 1
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    problems.append(f"{where} without weights_only=True")
            elif func in ("np.load", "numpy.load"):
                loaders += 1
                if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is not False:
                    problems.append(f"{where} with allow_pickle")
            elif func == "yaml.load":
                loaders += 1
                loader = kw.get("Loader")
                cls = getattr(_module(path), loader.id, None) if isinstance(loader, ast.Name) else None
                if not (isinstance(cls, type) and issubclass(cls, yaml.SafeLoader)):
                    problems.append(f"{where} with a Loader that is not a yaml.SafeLoader")
            elif func.endswith((".fit", ".predict", ".validate", ".test")) and "ckpt_path" in kw:
                loaders += 1
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    problems.append(f"{where}(ckpt_path=...) without weights_only=True")
    assert loaders >= 5 and not problems, "\n".join(problems)
