"""Two processes x batch B give the same loss and gradients as one process x batch 2B (gloo, CPU)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xmcore.distributed import gather, gather_with_grad
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import build, free_port

B, D_IMG, D_TXT, DIM = 6, 10, 7, 5


def setup(loss_name):
    torch.manual_seed(0)
    plugins = load_plugins()
    fusion = build(plugins["fusion"].get("linear"), BuildContext(input_dims={"image": D_IMG, "text": D_TXT}, dim=DIM))
    loss = build(plugins["loss"].get(loss_name))
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(2 * B, D_IMG, generator=g), torch.randn(2 * B, D_TXT, generator=g)
    groups = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9])  # two captions of one image in a batch, twice
    return fusion, loss, img, txt, groups


def step(fusion, loss, img, txt, groups):
    a = torch.nn.functional.normalize(fusion(img, "image"), dim=-1)
    b = torch.nn.functional.normalize(fusion(txt, "text"), dim=-1)
    value = loss(gather_with_grad(a), gather_with_grad(b), gather(groups))
    value.backward()
    params = list(fusion.parameters()) + list(loss.parameters())
    return value.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def worker(rank, port, loss_name, split, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        fusion, loss, img, txt, groups = setup(loss_name)
        part = slice(0, split) if rank == 0 else slice(split, 2 * B)
        value, grads = step(fusion, loss, img[part], txt[part], groups[part])
        for g in grads:  # what DDP does: average the parameter gradients over the processes
            dist.all_reduce(g)
            g /= 2
        if rank == 0:
            torch.save({"loss": value, "grads": grads}, out)
    finally:
        dist.destroy_process_group()



@pytest.mark.parametrize("loss_name,split", [("infonce", B), ("triplet", B), ("infonce", B - 2)],
                         ids=["infonce", "triplet", "infonce-unequal-batches"])
def test_two_processes_equal_one_process_with_the_whole_batch(loss_name, split, tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(worker, args=(free_port(), loss_name, split, str(out)), nprocs=2, join=True)
    distributed = torch.load(out, weights_only=True)

    fusion, loss, img, txt, groups = setup(loss_name)
    value, grads = step(fusion, loss, img, txt, groups)
    assert distributed["loss"] == pytest.approx(float(value), abs=1e-6)
    for ours, theirs in zip(grads, distributed["grads"]):
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_single_process_gather_is_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x and gather(torch.arange(3)).tolist() == [0, 1, 2]


def test_recipe_runs_under_ddp_on_cpu(plugins, tmp_path):
    from conftest import ROOT
    from xmcore.testing import run_cli, tiny_overrides

    recipe = ROOT / "recipes" / "quickstart.yaml"
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    # a port of its own: Lightning's default one may still be held by an earlier run on this machine
    result = run_cli("run", recipe, *tiny_overrides(recipe, plugins), *ddp, "--out", tmp_path / "run",
                     env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("| i2t |") == 1  # rank 0 alone evaluates and reports
    assert (tmp_path / "run" / "metrics.json").is_file()


def evaluation_worker(rank, port, out):
    """Each process embeds its share of the validation batches; the gathered metrics must be everyone's."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        metrics = validation_metrics()
        if rank == 0:
            torch.save(metrics, out)
    finally:
        dist.destroy_process_group()


def validation_metrics():
    from conftest import ROOT
    from xmcore.callbacks import embed_items
    from xmcore.evaluation import compute_metrics, rank_directions
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import assemble

    torch.manual_seed(0)
    plugins = load_plugins()
    recipe_path = ROOT / "recipes" / "quickstart.yaml"
    loaded = load_recipe(recipe_path, ["data.train=16", "data.val=21", "data.test=8", "eval.batch_size=4",
                                       "encoders.image.model_name=test_resnet", "encoders.image.img_size=32",
                                       "data.image_size=32"])
    recipe = validate(loaded, plugins)
    built, module, datamodule = assemble(recipe, loaded.base_dir, None)
    module.eval()
    split = built.data.splits["val"]
    embeddings = embed_items(module, split.modalities, datamodule.item_dataloaders("val"))
    return compute_metrics(rank_directions(embeddings, split), built.metrics)


def test_evaluation_split_over_two_processes_equals_one_process(tmp_path):
    out = tmp_path / "metrics.pt"
    mp.spawn(evaluation_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    distributed = torch.load(out, weights_only=True)
    single = validation_metrics()
    assert distributed.keys() == single.keys() and len(single) > 5
    for key, value in single.items():
        assert distributed[key] == pytest.approx(value, abs=1e-6), key
