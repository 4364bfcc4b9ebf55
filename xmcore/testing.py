"""Test helpers for xmcore and for plugin authors (as pytest ships ``pytester``).

* :func:`run_cli` runs the real ``xmcore`` command in a subprocess.
* :func:`tiny_overrides` turns any recipe into a seconds-long run, using each
  named component's ``test_params``.
* ``check_<kind>`` functions are the contract every component of a kind must
  meet; xmcore's own suite runs them over every registered component, and a
  plugin author can call them on their own::

      from xmcore.plugins import load_plugins
      from xmcore.testing import check_fusion

      def test_my_fusion():
          check_fusion(load_plugins()["fusion"].get("my-fusion"))
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from xmcore.registry import BuildContext, Component

TINY_TRAINER = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "data.batch_size=8",
    "data.num_workers=0",
    "eval.report=false",  # figures are tested on their own; drawing them in every tiny run costs seconds
]


def offline_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def run_cli(*args: str, cwd: str | Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 600):
    """Run ``xmcore ARGS`` in a subprocess (the same interpreter); returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "xmcore", *map(str, args)],
        cwd=cwd,
        env=offline_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def component_test_params(component: Component) -> dict[str, Any] | None:
    """The component's small test parameters; ``None`` when it cannot be built offline here."""
    tp = component.test_params
    if callable(tp):
        tp = tp()
        return None if tp is None else dict(tp)
    return dict(tp or {})


def tiny_overrides(recipe_path: str | Path, plugins, overrides: Sequence[str] = ()) -> list[str]:
    """Overrides that make a recipe run in seconds.

    A tiny trainer; the dataset shrunk to its component's ``test_params``; for the
    other components, ``test_params`` fill only keys the recipe leaves unset, so the
    models a recipe names are the ones its test runs.
    """
    from xmcore.recipe import load_recipe, validate

    loaded = load_recipe(recipe_path, list(overrides))
    recipe = validate(loaded, plugins)
    out = list(TINY_TRAINER)
    for path, section in recipe.component_sections():
        params = component_test_params(section.component) or {}
        if section.component.kind != "dataset":
            written = _get_dotted(loaded.data, path) or {}
            params = {k: v for k, v in params.items() if k not in written}
        out += [f"{path}.{k}={_yaml_scalar(v)}" for k, v in params.items()]
    return out


def _get_dotted(data: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def _yaml_scalar(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


# --------------------------------------------------------------------------- contracts


def build(component: Component, ctx: BuildContext | None = None, **overrides: Any):
    params = {**(component_test_params(component) or {}), **overrides}
    return component.build(component.params.model_validate(params), ctx or BuildContext())


def sample_items(modality: str, n: int = 3, component: Component | None = None) -> list[Any]:
    """``n`` raw items of ``modality``: the core's own for images and texts, else the component's ``test_items``."""
    if component is not None and component.test_items is not None and modality not in ("image", "text"):
        return list(component.test_items(n))
    if modality == "image":
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]
    if modality == "text":
        return ["a red circle left of a blue square", "a green triangle", ""][:n] + ["x"] * max(0, n - 3)
    raise NotImplementedError(f"no sample items for modality '{modality}'")


def check_encoder(component: Component, modality: str) -> None:
    """Builds, preprocesses raw items, collates, encodes to ``output_dim``, and pickles its preprocessor."""
    import pickle

    import torch

    items = sample_items(modality, component=component)
    ctx = BuildContext(modality=modality, train_items=lambda: items)
    encoder = build(component, ctx)
    assert isinstance(encoder, torch.nn.Module)
    assert isinstance(encoder.output_dim, int) and encoder.output_dim > 0
    pre = pickle.loads(pickle.dumps(encoder.preprocessor))  # it must reach DataLoader workers
    batch = pre.collate([pre(x) for x in items])
    encoder.eval()
    with torch.no_grad():
        out = encoder(batch)
    assert out.shape == (len(items), encoder.output_dim), out.shape
    assert torch.isfinite(out).all()


def check_fusion(component: Component) -> None:
    """Maps each modality to the common width; gradients reach every projection."""
    import torch

    dims = {"image": 12, "text": 7}
    fusion = build(component, BuildContext(input_dims=dims, dim=5))
    torch.manual_seed(0)
    emb = {m: fusion(torch.randn(4, d), m) for m, d in dims.items()}
    for m, e in emb.items():
        assert e.shape == (4, 5), (m, e.shape)
    total = sum(e.square().sum() for e in emb.values())
    aux, logs = fusion.auxiliary_loss({m: torch.nn.functional.normalize(e, dim=-1) for m, e in emb.items()}, 0.5)
    if aux is not None:
        assert aux.ndim == 0 and torch.isfinite(aux)
        total = total + aux
        assert all(torch.as_tensor(v).numel() == 1 for v in logs.values())
    total.backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"


def check_loss(component: Component) -> None:
    """A scalar; lower for matching pairs than for shuffled ones (after a loss with parameters of its own,
    a classifier say, fitted them to the matching pairs); gradients flow."""
    import torch

    torch.manual_seed(0)
    loss = build(component, BuildContext(dim=6, num_classes=8))
    a = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1).requires_grad_()
    groups = torch.arange(8)
    own = [p for p in loss.parameters() if p.requires_grad]
    if own:
        opt = torch.optim.Adam(own, lr=0.1)
        for _ in range(30):
            opt.zero_grad()
            loss(a.detach(), a.detach(), groups).backward()
            opt.step()
    aligned = loss(a, a, groups)
    shuffled = loss(a, a.roll(1, dims=0), groups)
    assert aligned.ndim == 0 and torch.isfinite(aligned)
    assert aligned < shuffled, (aligned, shuffled)
    shuffled.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def check_metric(component: Component) -> None:
    """Returns finite floats under ``<direction>/<metric>`` or bare global ids, for a real evaluation; with
    relevance by class too.  A metric that declares ``needs`` gets the same values from a ranking that kept
    only what it declared as from one that kept every rank."""
    import numpy as np
    import torch

    from xmcore.data import Split
    from xmcore.evaluation import evaluate, rank_directions

    g = torch.Generator().manual_seed(0)
    owner = np.repeat(np.arange(6), 2)
    embeddings = {"image": torch.randn(6, 8, generator=g), "text": torch.randn(12, 8, generator=g)}
    metric = build(component)
    for labels in (None, np.arange(6) % 2):
        split = Split(("image", "text"), {"image": list(range(6)), "text": list(range(12))}, owner, labels,
                      "owner" if labels is None else "label")
        rankings = rank_directions(embeddings, split)
        values = metric(rankings)
        assert values, "a metric returns at least one value"
        for key, value in values.items():
            direction, sep, _ = key.partition("/")
            assert not sep or direction in rankings, key
            assert math.isfinite(float(value)), (key, value)
        if getattr(metric, "needs", None) is not None:
            kept = evaluate(embeddings, split, [metric])[1]
            assert kept.keys() == values.keys() and all(math.isclose(kept[k], values[k], abs_tol=1e-12) for k in kept), (
                "the values differ when the ranking keeps only what the metric's `needs` declares", kept, values
            )


def check_dataset(component: Component, ctx: BuildContext | None = None, **params: Any) -> None:
    """Has a train split; every split has owners and aligned members with valid owner indices.

    A dataset that reads files (its ``test_params`` are ``None``) is checked on a small fixture:
    pass its parameters, and ``ctx=BuildContext(base_dir=...)`` for the folder they are relative to.
    """
    validated = component.params.model_validate({**(component_test_params(component) or {}), **params})
    data = component.build(validated, ctx or BuildContext())
    assert "train" in data.splits
    declared = component.modalities_for(validated)
    if declared:
        assert all(s.modalities == declared for s in data.splits.values())
    for name, split in data.splits.items():
        first = split.modalities[0]
        assert len(split.items[first]) > 0 and len(split.owner) > 0, name
        assert all(len(split.owner) == len(split.items[m]) for m in split.members), name
        assert 0 <= split.owner.min() and split.owner.max() < len(split.items[first])


def check_augmentation(component: Component, modality: str, ctx: BuildContext | None = None, **params: Any) -> None:
    """Returns an item of the same kind for each sample item (``ctx`` and ``params`` as for ``check_dataset``)."""
    import dataclasses

    ctx = dataclasses.replace(ctx, modality=modality) if ctx else BuildContext(modality=modality)
    augment = build(component, ctx, **params)
    for item in sample_items(modality, component=component):
        out = augment(item)
        assert type(out) is type(item) or (modality == "image" and hasattr(out, "size")), type(out)


def tiny_explain_model(plugins=None, modality: str = "image"):
    """A small untrained model for :func:`check_explainer`: timm's ``test_resnet`` at 32 pixels, an LSTM over the
    sample texts' words, a linear common space (the first-party components, seeded).  For a ``modality`` other than
    image and text, the first installed encoder of it that gives test parameters and items stands for the picture
    model (:func:`modality_encoder`)."""
    import torch

    from xmcore.explain import ExplainModel
    from xmcore.plugins import load_plugins

    plugins = plugins or load_plugins()
    torch.manual_seed(0)
    texts = sample_items("text")
    first = modality if modality not in ("image", "text") else "image"
    encoders = {
        first: build(modality_encoder(plugins, first), BuildContext(modality=first))
        if first != "image" else build(plugins["encoder"].get("timm"), BuildContext(modality="image"), model_name="test_resnet", img_size=32),
        "text": build(plugins["encoder"].get("lstm"), BuildContext(modality="text", train_items=lambda: texts),
                      embed_dim=8, hidden=8),
    }
    fusion = build(plugins["fusion"].get("linear"), BuildContext(input_dims={m: e.output_dim for m, e in encoders.items()}, dim=8))
    return ExplainModel(encoders, fusion, "the contract's tiny model")


def modality_encoder(plugins, modality: str) -> Component:
    """The first installed encoder of ``modality`` with test parameters and test items (a plugin's modality)."""
    for component in plugins["encoder"]:
        if modality in (component.modalities or ()) and component.test_items is not None and component_test_params(component) is not None:
            return component
    raise AssertionError(f"no installed encoder of '{modality}' gives test parameters and test items to check an explainer with")


def check_explainer(component: Component, modality: str, model=None, item: Any = None, **params: Any) -> None:
    """Explains one raw item against the fixed embedding of another modality's item: the score is the pair's
    cosine; a picture's map is ``[height, width]`` over its own pixels (a non-square sample), finite and not
    flat; a text's attributions are one finite value per word, not all zero; the model's weights are unchanged.

    ``model`` (an :class:`xmcore.explain.ExplainModel`; default :func:`tiny_explain_model`) and ``item`` are for an
    explainer that needs another kind of encoder (a ViT, a model of a plugin's modality) than the default's."""
    import numpy as np
    import torch

    from xmcore.explain import explain, words_of

    if model is None:
        from xmcore.plugins import load_plugins

        model = tiny_explain_model(modality=modality)
        if item is None and modality not in ("image", "text"):
            item = sample_items(modality, 1, modality_encoder(load_plugins(), modality))[0]
    item = item if item is not None else sample_items(modality, 1, component)[0]
    other = next(m for m in model.modalities if m != modality)
    target = model.target(other, sample_items(other, 2, component)[1])
    before = {m: {k: v.clone() for k, v in e.state_dict().items() if torch.is_tensor(v)} for m, e in model.encoders.items()}
    validated = component.params.model_validate({**(component_test_params(component) or {}), **params})
    result = explain(component, validated, model, modality, item, target)
    assert result.method == component.name and result.modality == modality
    assert math.isclose(result.score, model.score(modality, item, target), abs_tol=1e-4), (result.score, model.score(modality, item, target))
    values = np.asarray(result.attributions)
    assert np.isfinite(values).all(), "attributions must be finite"
    if modality == "image":
        assert values.shape == (item.height, item.width), values.shape
        assert values.max() > values.min(), "a flat map says nothing"
    elif isinstance(item, str):
        assert [w.text for w in result.words] == [item[a:b] for a, b in words_of(item)]
        assert values.shape == (len(result.words),) and np.abs(values).max() > 0
    else:  # a map over what its canvas shows (a spectrogram, say)
        assert result.canvas is not None and values.shape == np.shape(result.canvas.background) and values.ndim == 2
        assert values.max() > values.min(), "a flat map says nothing"
    for m, encoder in model.encoders.items():
        after = encoder.state_dict()
        assert all(torch.equal(before[m][k], after[k]) for k in before[m]), f"explaining changed the {m} encoder's weights"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (for a test's server or DDP rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
