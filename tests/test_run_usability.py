"""What `xmcore run` tells a user: runs shorter than an epoch validate, log and keep a best checkpoint,
and say which checkpoint was evaluated; Lightning's notices that need no action stay out of the
output unless --verbose."""

import csv
import logging
import warnings

import pytest

from conftest import ROOT
from xmcore.cli import main
from xmcore.testing import tiny_overrides

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
NOISE = ("GPU available:", "TPU available:", "💡 Tip", "LeafSpec", "Be aware that when using `ckpt_path`")


@pytest.fixture(scope="module")
def shorter_than_an_epoch(plugins):
    """A tiny run whose trainer.max_steps (3) ends it in its first epoch (10 batches), logging every 50 steps."""
    overrides = [o for o in tiny_overrides(QUICKSTART, plugins) if not o.startswith("trainer.limit_train_batches")]
    return overrides + ["trainer.max_epochs=5", "trainer.max_steps=3", "trainer.log_every_n_steps=50"]


def test_a_run_shorter_than_an_epoch_validates_logs_and_keeps_its_best_checkpoint(shorter_than_an_epoch, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(QUICKSTART), *shorter_than_an_epoch, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").open()))
    assert [r["step"] for r in rows if r.get("train/loss")] == ["2"]  # the last step (0-based), though < 50
    assert [r["step"] for r in rows if r.get("val/rsum")] == ["2"]
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert "note: evaluating checkpoints/best.ckpt: the best val/rsum" in err
    assert "could not find the monitored key" not in err
    assert "(best.ckpt)" in (out / "metrics.md").read_text().splitlines()[0]


def test_evaluate_says_which_checkpoint_it_uses(shorter_than_an_epoch, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(QUICKSTART), *shorter_than_an_epoch, "--out", str(out)]) == 0
    capsys.readouterr()
    (out / "checkpoints" / "best.ckpt").unlink()
    assert main(["evaluate", str(out), "--out", str(tmp_path / "ev")]) == 0
    assert "note: evaluating checkpoints/last.ckpt (the run has no best.ckpt: no validation ran)" in capsys.readouterr().err


def run_and_listen(args, caplog):
    """Run the CLI in-process; return everything Lightning logged and warned, and the captured output."""
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(args)
    assert code == 0
    return caplog.text + "\n".join(str(w.message) for w in caught)


@pytest.mark.parametrize("verbose", [False, True])
def test_notices_that_need_no_action_only_with_verbose(shorter_than_an_epoch, tmp_path, caplog, capfd, verbose):
    args = ["run", str(QUICKSTART), *shorter_than_an_epoch, "--out", str(tmp_path / "run")] + (["--verbose"] if verbose else [])
    heard = run_and_listen(args, caplog)
    out, err = capfd.readouterr()
    heard += out + err
    for line in NOISE:
        assert (line in heard) == verbose, (line, verbose)
    assert "| i2t |" in out and "note: evaluating checkpoints/best.ckpt" in err  # xmcore's own output stays
