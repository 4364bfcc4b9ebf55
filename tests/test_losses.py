"""Label-aware objectives: class labels as the losses' groups, same-class pairs as positives, a label classifier."""

import pytest
import torch
import yaml

from conftest import RECIPES, cli, write_csv, write_image
from xmcore.data import PairDataset
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import TINY_TRAINER, build

PLUGINS = load_plugins()
QUICKSTART = [r for r in RECIPES if r.stem == "quickstart"][0]


def same_class_margin_after_training(group_positives: bool) -> float:
    """Two pairs of one class and two of another, trained with InfoNCE: how far above the other class's
    captions an image scores the *other* caption of its own class (the smallest such margin)."""
    torch.manual_seed(0)
    loss = build(PLUGINS["loss"].get("infonce"), learn_temperature=False, temperature=0.1, group_positives=group_positives)
    a = torch.randn(4, 8, requires_grad=True)
    b = torch.randn(4, 8, requires_grad=True)
    groups = torch.tensor([0, 0, 1, 1])
    opt = torch.optim.Adam([a, b], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss(torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1), groups).backward()
        opt.step()
    scores = torch.nn.functional.normalize(a.detach(), dim=-1) @ torch.nn.functional.normalize(b.detach(), dim=-1).T
    partner_in_class = torch.tensor([1, 0, 3, 2])
    own_class_other = scores[torch.arange(4), partner_in_class]
    other_class_best = torch.stack([scores[i, groups != groups[i]].max() for i in range(4)])
    return float((own_class_other - other_class_best).min())


def test_group_positives_pull_same_class_pairs_together():
    # As a positive, the other caption of the class ranks above every caption of the other class;
    # only left out of the negatives, it is not pulled in.
    with_positives, left_out = same_class_margin_after_training(True), same_class_margin_after_training(False)
    assert with_positives > 0.6 and with_positives > left_out + 0.3, (with_positives, left_out)


def test_label_ce_needs_class_labels_and_learns_them():
    with pytest.raises(Exception, match="loss.groups=label"):
        build(PLUGINS["loss"].get("label-ce"), BuildContext(dim=4))
    loss = build(PLUGINS["loss"].get("label-ce"), BuildContext(dim=4, num_classes=3))
    assert loss.classifier.weight.shape == (3, 4)
    labels = torch.tensor([0, 1, 2, -1])  # -1: an item without a known class is left out
    a = torch.nn.functional.normalize(torch.eye(4), dim=-1)
    assert torch.isfinite(loss(a, a, labels))


def test_pairs_grouped_by_label(tmp_path):
    write_csv(tmp_path)
    data = build(PLUGINS["dataset"].get("csv"), BuildContext(base_dir=tmp_path), path="data.tsv",
                 label_column="colour", split_column="split")
    train = data.splits["train"]
    identity = {m: (lambda x: x) for m in train.modalities}
    by_image = [row["group"] for row in PairDataset(train, identity, {})]
    by_label = [row["group"] for row in PairDataset(train, identity, {}, group_by="label")]
    assert by_image == [int(train.owner[j]) for j in range(len(train))]
    assert by_label == [int(train.labels[train.owner[j]]) for j in range(len(train))]


def test_pair_groups_on_class_level_data(tmp_path):
    # imagefolder judges relevance by class; loss.groups=pair makes each image its own group again
    for colour in ("red", "green"):
        for n in range(3):
            write_image(tmp_path / colour / f"{n}.png", colour)
    data = build(PLUGINS["dataset"].get("imagefolder"), BuildContext(base_dir=tmp_path), root=".",
                 split_ratios=(1.0, 0.0, 0.0))
    train = data.splits["train"]
    identity = {m: (lambda x: x) for m in train.modalities}
    by_relevance = [row["group"] for row in PairDataset(train, identity, {})]
    by_pair = [row["group"] for row in PairDataset(train, identity, {}, group_by="pair")]
    assert sorted(set(by_relevance)) == [0, 1]  # the two classes
    assert by_pair == [int(train.owner[j]) for j in range(len(train))] and len(set(by_pair)) == 6


def write_labelled_recipe(tmp_path, loss):
    write_csv(tmp_path)
    recipe = yaml.safe_load(QUICKSTART.read_text())
    recipe["data"] = {"name": "csv", "path": "data.tsv", "label_column": "colour", "split_column": "split", "batch_size": 4}
    recipe["encoders"]["image"].update(img_size=32)
    recipe["loss"] = loss
    recipe["eval"]["report"] = False
    path = tmp_path / "labelled.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_label_aware_recipe_trains_the_label_classifier(capfd, tmp_path):
    loss = {"name": "infonce", "groups": "label", "group_positives": True, "extra": [{"name": "label-ce", "weight": 0.5}]}
    recipe = write_labelled_recipe(tmp_path, loss)
    result = cli(capfd, "run", recipe, *TINY_TRAINER, "trainer.max_epochs=3", "trainer.log_every_n_steps=1",
                 "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    import csv

    with (tmp_path / "run" / "logs" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/label-ce_loss")]
    assert rows
    for row in rows:  # the objective is part of what trains, with its weight
        total = float(row["train/retrieval_loss"]) + 0.5 * float(row["train/label-ce_loss"])
        assert float(row["train/loss"]) == pytest.approx(total, rel=1e-5)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    classes = 4  # red, green, blue, yellow
    assert state["extra_losses.0.classifier.weight"].shape == (classes, 128)
    # Evaluated on other data -- fewer classes, or none -- the trained model embeds as before: the losses
    # (and their classifier sized for the training classes) only train.
    other = tmp_path / "other"
    write_csv(other, rows=[("img/a.png", "a red square", "red", "test"), ("img/b.png", "a green square", "green", "test"),
                           ("img/c.png", "a green box", "green", "train")])
    for extra in ([], ["data.label_column=null"]):
        result = cli(capfd, "evaluate", tmp_path / "run", f"data.path={other / 'data.tsv'}", *extra)
        assert result.returncode == 0, result.stderr[-2000:]


def test_label_groups_reach_the_training_pairs(plugins, tmp_path):
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import assemble

    recipe = write_labelled_recipe(tmp_path, {"name": "infonce", "groups": "label"})
    loaded = load_recipe(recipe, [])
    built, _, datamodule = assemble(validate(loaded, plugins), loaded.base_dir, None)
    train = built.data.splits["train"]
    assert datamodule.train_dataloader().dataset.groups.tolist() == train.labels.tolist()
    assert train.labels.tolist() != list(range(len(train.labels)))  # labels, not image ids


def test_label_groups_on_a_dataset_without_labels_is_refused(capfd, tmp_path):
    result = cli(capfd, "run", QUICKSTART, *TINY_TRAINER, "loss.groups=label", "--out", tmp_path / "run")
    assert result.returncode == 2
    assert "loss.groups: 'label' needs class labels" in result.stderr and "dataset 'shapes'" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
    result = cli(capfd, "run", QUICKSTART, *TINY_TRAINER, "loss.extra=[{name: label-ce}]", "--out", tmp_path / "run2")
    assert result.returncode == 2 and "loss 'label-ce'" in result.stderr and "loss.groups=label" in result.stderr


def test_unknown_extra_loss_is_a_recipe_error(capfd):
    result = cli(capfd, "validate", QUICKSTART, "loss.extra=[{name: label-cee, weight: 1}]")
    assert result.returncode == 2
    assert "loss.extra.0.name: unknown loss 'label-cee'; did you mean 'label-ce'?" in result.stderr
