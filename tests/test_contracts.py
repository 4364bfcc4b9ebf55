"""Contract tests, parametrized over every registered component: a new plugin is tested by these."""

import pytest

from xmcore.plugins import load_plugins
from xmcore.testing import (
    check_augmentation, check_dataset, check_encoder, check_fusion, check_loss, check_metric,
    component_test_params,
)

PLUGINS = load_plugins()


def cases(kind, per_modality=False):
    out = []
    for c in PLUGINS[kind]:
        mods = c.modalities or ("image", "text")
        for m in mods if per_modality else [None]:
            ident = f"{c.name}-{m}" if m else c.name
            marks = [pytest.mark.skip(reason="the component gives no test parameters here (it needs files or models absent on this machine)")] if component_test_params(c) is None else []
            out.append(pytest.param(c, m, id=ident, marks=marks))
    return out


@pytest.mark.parametrize("component, modality", cases("encoder", per_modality=True))
def test_encoder_contract(component, modality):
    check_encoder(component, modality)


@pytest.mark.parametrize("component, modality", cases("fusion"))
def test_fusion_contract(component, modality):
    check_fusion(component)


@pytest.mark.parametrize("component, modality", cases("loss"))
def test_loss_contract(component, modality):
    check_loss(component)


@pytest.mark.parametrize("component, modality", cases("metric"))
def test_metric_contract(component, modality):
    check_metric(component)


@pytest.mark.parametrize("component, modality", cases("dataset"))
def test_dataset_contract(component, modality):
    check_dataset(component)


@pytest.mark.parametrize("component, modality", cases("augmentation", per_modality=True))
def test_augmentation_contract(component, modality):
    check_augmentation(component, modality)


@pytest.mark.parametrize("kind", ["dataset", "encoder", "fusion", "loss", "metric"])
def test_every_kind_has_components(kind):
    assert len(PLUGINS[kind]) > 0


@pytest.mark.parametrize("kind", ["dataset", "augmentation", "encoder", "fusion", "loss", "metric"])
def test_every_parameter_is_documented(kind):
    for c in PLUGINS[kind]:
        assert c.help, f"{kind} '{c.name}' has no help line"
        for p in c.describe_params():
            assert p["help"], f"{kind} '{c.name}' parameter '{p['name']}' has no description"
