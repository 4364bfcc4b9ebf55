"""Killed and resumed, nothing lost: a run killed with SIGKILL in mid-epoch and resumed ends exactly as an
uninterrupted run, on one process and under DDP (two CPU processes); checkpoints on a step interval; --resume before any checkpoint starts afresh; nothing
half-written is left in a run directory or the feature cache.  (bench/kill_resume.py: many kill points.)"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, cli
from xmcore.testing import free_port, offline_env, tiny_overrides

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
STEPS_PER_EPOCH = 5  # data.train=8: 8 pictures x 5 captions = 40 pairs, batches of 8


def small(plugins, *extra):
    """The quickstart at tiny size, two whole epochs of 5 steps (no batch limit), a checkpoint every step."""
    tiny = [o for o in tiny_overrides(QUICKSTART, plugins) if not o.startswith(("trainer.limit_train_batches",
                                                                                "trainer.max_epochs", "data.train="))]
    return [QUICKSTART, *tiny, "data.train=8", "trainer.max_epochs=2", "checkpoint.every_n_steps=1", *extra]


def xmcore_process(*args, env=None, session=False):
    return subprocess.Popen([sys.executable, "-m", "xmcore", *map(str, args)],
                            env=offline_env({"OMP_NUM_THREADS": "1", **(env or {})}), start_new_session=session,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_saves(proc, last, saves):
    """Until ``last`` has been written ``saves`` times (or ``proc`` ended)."""
    seen, stamp = 0, None
    while proc.poll() is None and seen < saves:
        try:
            now = last.stat().st_mtime_ns
        except FileNotFoundError:
            now = None
        if now is not None and now != stamp:
            seen, stamp = seen + 1, now
        time.sleep(0.002)


def finished(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return err


def step_of(path):
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def assert_same_metrics(killed, whole, at: int) -> None:
    """The resumed run's metrics.json equals the uninterrupted run's to 1e-6 (``at``: the step it resumed from)."""
    ours = json.loads((killed / "metrics.json").read_text())
    theirs = json.loads((whole / "metrics.json").read_text())
    assert ours.keys() == theirs.keys()
    assert all(abs(ours[k] - theirs[k]) <= 1e-6 for k in ours), (at, ours, theirs)


def test_a_run_killed_in_mid_epoch_resumes_to_the_uninterrupted_metrics(plugins, tmp_path):
    args = small(plugins)
    reference = xmcore_process("run", *args, "--out", tmp_path / "whole")
    killed = xmcore_process("run", *args, "--out", tmp_path / "killed")
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    wait_for_saves(killed, last, 3)  # the third save: step 3, inside the first epoch
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it was killed"
    at = step_of(last)
    assert 0 < at < 2 * STEPS_PER_EPOCH and not (tmp_path / "killed" / "metrics.json").exists()

    finished(xmcore_process("run", *args, "--out", tmp_path / "killed", "--resume"))
    finished(reference)
    assert_same_metrics(tmp_path / "killed", tmp_path / "whole", at)
    # the same steps in the same order: the resumed part's logged losses are the uninterrupted run's
    assert step_of(last) == step_of(tmp_path / "whole" / "checkpoints" / "last.ckpt") == 2 * STEPS_PER_EPOCH
    assert not [p for p in (tmp_path / "killed").rglob(".*.tmp")]


DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


def train_losses(csv_path):
    """{step: train/loss} of a run's logs/metrics.csv."""
    with open(csv_path, newline="") as fh:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r["train/loss"]}


def test_ddp_run_killed_in_mid_epoch_resumes_to_the_uninterrupted_metrics(plugins, tmp_path):
    """DDP (2 CPU processes, gloo; ~60 s on 2 loaded cores): the launching process and its rank-1 child
    killed with SIGKILL after the third step's checkpoint and resumed on 2 processes end as an uninterrupted
    2-process run: each rank skips the consumed batches of its own shard (data.train=16: 80 pairs, 40 a
    rank, 5 steps an epoch; on one process it would be 10) and the same steps follow.  The loss is over
    both ranks' gathered batches, so a rank resuming at the wrong batch changes it (checked: rank 1's
    remaining batches reordered moves the step-3 loss and the metrics by up to 0.5)."""
    args = small(plugins, "data.train=16", *DDP)

    def ddp_process(*more):  # a session of its own: kill -9 of the launcher and its rank-1 child at once
        return xmcore_process("run", *args, *more, session=True,
                              env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})

    reference = ddp_process("--out", tmp_path / "whole")
    killed = ddp_process("--out", tmp_path / "killed")
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    wait_for_saves(killed, last, 3)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it was killed"
    at = step_of(last)
    assert 0 < at < 2 * STEPS_PER_EPOCH and not (tmp_path / "killed" / "metrics.json").exists()
    state = torch.load(last, map_location="cpu", weights_only=True)["loops"]["fit_loop"]["state_dict"]
    if at < STEPS_PER_EPOCH:  # the loader's position in the epoch, which each rank resumes its shard at
        assert state["combined_loader"] == [{"epoch": 0, "batches": at}]

    finished(ddp_process("--out", tmp_path / "killed", "--resume"))
    finished(reference)
    assert_same_metrics(tmp_path / "killed", tmp_path / "whole", at)
    assert step_of(last) == step_of(tmp_path / "whole" / "checkpoints" / "last.ckpt") == 2 * STEPS_PER_EPOCH
    resumed, whole = (train_losses(d / "logs" / "metrics.csv") for d in (tmp_path / "killed", tmp_path / "whole"))
    assert min(resumed) == at and sorted(resumed) == list(range(at, 2 * STEPS_PER_EPOCH))
    assert all(abs(resumed[s] - whole[s]) <= 1e-6 for s in resumed), (at, resumed, whole)
    assert not [p for p in (tmp_path / "killed").rglob(".*.tmp")]


def test_resume_without_a_checkpoint_starts_from_the_beginning(plugins, tmp_path, capfd):
    args = small(plugins, "trainer.max_epochs=1", "checkpoint.every_n_steps=null")
    fresh = cli(capfd, "run", *args, "--out", tmp_path / "fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]

    run_dir = tmp_path / "killed"  # what a run killed before its first checkpoint leaves
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / ".last.ckpt.k1ll3d.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    (run_dir / "recipe.yaml").write_text((tmp_path / "fresh" / "recipe.yaml").read_text())
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "metrics.csv").write_text("epoch,step,train/loss\n0,0,4.1\n0,1,4.")  # a row cut short
    resumed = cli(capfd, "run", *args, "--out", run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "starting the run from the beginning" in resumed.stderr
    assert (run_dir / "metrics.json").read_bytes() == (tmp_path / "fresh" / "metrics.json").read_bytes()
    assert not (run_dir / "checkpoints" / ".last.ckpt.k1ll3d.tmp").exists()
    assert (run_dir / "logs" / "metrics.part1.csv").read_text() == "epoch,step,train/loss\n0,0,4.1\n"

    nowhere = cli(capfd, "run", *args, "--out", tmp_path / "never-started", "--resume")
    assert nowhere.returncode == 0 and "starting the run from the beginning" in nowhere.stderr


def test_a_checkpoint_interval_writes_before_the_first_epoch_ends(plugins, tmp_path):
    import pytorch_lightning as pl

    from xmcore.recipe import load_recipe, validate
    from xmcore.run import assemble, build_trainer

    seen = {}

    class Look(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            last = tmp_path / "run" / "checkpoints" / "last.ckpt"
            if trainer.current_epoch == 0 and batch_idx == STEPS_PER_EPOCH - 1:  # the first epoch's last step
                seen["step"] = step_of(last) if last.is_file() else None

    loaded = load_recipe(QUICKSTART, [str(a) for a in small(plugins, "trainer.max_epochs=1", "checkpoint.every_n_steps=2")[1:]])
    recipe = validate(loaded, plugins)
    built, module, datamodule = assemble(recipe, loaded.base_dir, tmp_path / "run")
    trainer, _ = build_trainer(recipe, built, datamodule, tmp_path / "run", extra_callbacks=(Look(),))
    trainer.fit(module, datamodule=datamodule)
    assert seen["step"] == 4  # written at steps 2 and 4 of an epoch of 5, before any validation


def test_no_interval_checkpoint_at_an_epochs_last_step_before_its_validation(plugins, tmp_path):
    """A run resumed from a checkpoint of an epoch's last step, written before that epoch's validation,
    does not validate the epoch (Lightning restarts past its end): its best checkpoint, and so its
    metrics, differed from the uninterrupted run's (measured: killed there, max |diff| 2.0 on the tiny
    quickstart, 2.3e2 in bench/kill_resume.py --ddp).  The interval checkpoints save that step at the
    epoch's end, after its validation."""
    import pytorch_lightning as pl

    from xmcore.recipe import load_recipe, validate
    from xmcore.run import assemble, build_trainer

    seen = []
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"

    class Look(pl.Callback):
        def on_validation_start(self, trainer, module):
            seen.append(step_of(last) if last.is_file() else None)

    loaded = load_recipe(QUICKSTART, [str(a) for a in small(plugins)[1:]])
    recipe = validate(loaded, plugins)
    built, module, datamodule = assemble(recipe, loaded.base_dir, tmp_path / "run")
    trainer, _ = build_trainer(recipe, built, datamodule, tmp_path / "run", extra_callbacks=(Look(),))
    trainer.fit(module, datamodule=datamodule)
    # at each epoch's validation: the step before the epoch's last; after it, the epoch's end
    assert seen == [STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH - 1] and step_of(last) == 2 * STEPS_PER_EPOCH


def test_checkpoint_keys_become_lightning_model_checkpoints(plugins, tmp_path, capfd):
    from datetime import timedelta

    from xmcore.recipe import load_recipe, validate
    from xmcore.run import interval_checkpoints

    recipe = validate(load_recipe(QUICKSTART, ["checkpoint.every_n_steps=50", "checkpoint.every_minutes=0.5"]), plugins)
    steps, minutes = interval_checkpoints(recipe, tmp_path)
    assert steps._every_n_train_steps == 50 and steps.save_last and steps.save_top_k == 0
    assert minutes._train_time_interval == timedelta(seconds=30)
    assert interval_checkpoints(validate(load_recipe(QUICKSTART, []), plugins), tmp_path) == []
    refused = cli(capfd, "validate", QUICKSTART, "checkpoint.every_n_steps=0")
    assert refused.returncode == 2 and "checkpoint.every_n_steps" in refused.stderr


def test_a_checkpoint_save_that_fails_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    from xmcore.callbacks import AtomicCheckpointIO

    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, target)

    def dies_midway(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 the first bytes")
        raise KeyboardInterrupt  # as a signal would, in the middle of writing

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert step_of(target) == 1 and os.listdir(target.parent) == ["last.ckpt"]


@pytest.mark.parametrize("workers", [0, 2])
def test_resumable_loader_skips_the_consumed_batches_in_the_same_order(plugins, workers):
    """The data order and each pair's augmentation depend on (seed, epoch, pair) only; a loader restored
    from a mid-epoch state yields exactly the rest of that epoch, whatever the global generators hold,
    and the next epoch whole (worker processes, kept from epoch to epoch, included)."""
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import assemble

    augment = ["augment.image=[{name: random-erasing, p: 0.5}]", "augment.text=[{name: random-swap, p: 0.5}]"]
    loaded = load_recipe(QUICKSTART, [str(a) for a in small(plugins, *augment, f"data.num_workers={workers}")[1:]])
    _, _, datamodule = assemble(validate(loaded, plugins), loaded.base_dir, None)

    def epoch(loader, n, state=None):
        loader.sampler.set_epoch(n)
        if state:
            loader.load_state_dict(state)
        return [batch for batch in loader]

    def same(ours, theirs):
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["group"], b["group"])
            assert all(torch.equal(a["text"][k], b["text"][k]) for k in b["text"])

    uninterrupted = datamodule.train_dataloader()
    whole, following = epoch(uninterrupted, 1), epoch(uninterrupted, 2)
    assert len(whole) == STEPS_PER_EPOCH
    assert not torch.equal(following[0]["group"], whole[0]["group"])  # another epoch, another order
    interrupted = datamodule.train_dataloader()
    interrupted.sampler.set_epoch(1)
    iterator = iter(interrupted)
    first_two = [next(iterator), next(iterator)]
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    del iterator, interrupted

    torch.manual_seed(123)  # a resumed process's generators are anywhere
    resumed = datamodule.train_dataloader()
    rest = epoch(resumed, 1, state)
    assert len(rest) == STEPS_PER_EPOCH - 2
    same(first_two + rest, whole)
    same(epoch(resumed, 2), following)


def test_an_abandoned_cache_write_is_removed_and_the_entry_rebuilt(tmp_path):
    from xmcore.cache import cached_features, list_entries

    calls = []

    def compute():
        calls.append(1)
        return torch.arange(12, dtype=torch.float32).reshape(4, 3)

    identity = {"encoder": "fixed"}
    encoder = torch.nn.Linear(3, 3)
    features, hit = cached_features(tmp_path, identity, encoder, list("abcd"), compute)
    (entry,) = tmp_path.iterdir()
    shard = entry / "part-0000.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated by a kill
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f"{entry.name}.partial-{int(dead.stdout)}"  # a writer killed before its rename
    abandoned.mkdir()
    (abandoned / "meta.json").write_text(json.dumps({"rows": 4, "shards": []}))
    assert [e["key"] for e in list_entries(tmp_path)] == [entry.name]  # a partial folder is no entry

    again, hit = cached_features(tmp_path, identity, encoder, list("abcd"), compute)
    assert not hit and len(calls) == 2 and torch.equal(again, features)
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.name]
    assert cached_features(tmp_path, identity, encoder, list("abcd"), compute)[1]


@pytest.mark.parametrize("phase", ["embedding", "faiss"])
def test_an_index_build_killed_resumes_to_the_uninterrupted_index(trained_run, gallery_index, phase, tmp_path, capfd):
    """``xmcore index`` killed (SIGKILL, a real subprocess) once its first shard is written, or once it
    writes its FAISS indexes, and run again: the index equals an uninterrupted build's (the session's
    ``gallery_index``: the same command), nothing half-written."""
    from xmcore.search import verify

    out = tmp_path / "killed"
    mark = out / ("building.json" if phase == "embedding" else "faiss")
    proc = xmcore_process("index", trained_run, "--out", out, "--split", "test")
    while proc.poll() is None and not mark.exists():
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (out / "manifest.json").exists(), "it ended before the kill"

    again = cli(capfd, "index", trained_run, "--out", out, "--split", "test")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming:" in again.stderr
    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (out, gallery_index))
    assert verify(out) == []
    assert sorted(ours["checksums"]) == sorted(theirs["checksums"])
    for name, digest in theirs["checksums"].items():
        if name.startswith("metadata/"):
            assert ours["checksums"][name] == digest, name
        elif name.startswith("embeddings/"):
            # another process embeds on other threads: float32 sums may round differently in the last bit
            np.testing.assert_allclose(np.load(out / name), np.load(gallery_index / name), rtol=0, atol=1e-6, err_msg=name)
        elif name.startswith("faiss/"):
            import faiss

            mine, whole = faiss.read_index(str(out / name)), faiss.read_index(str(gallery_index / name))
            assert type(mine) is type(whole) and mine.ntotal == whole.ntotal, name
            np.testing.assert_allclose(mine.reconstruct_n(0, mine.ntotal), whole.reconstruct_n(0, whole.ntotal),
                                       rtol=0, atol=1e-6, err_msg=name)
    assert not (out / "building.json").exists() and not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
