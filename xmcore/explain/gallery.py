"""Explanations for the run report: heatmaps over the top results of a few queries (``eval.explain``).

The report's retrieval gallery shows what a model finds; this shows why: for the gallery's first
queries of the second modality (captions), the top results of the first (pictures) with the map of an
explainer over each, the score beside it.  :func:`report_explainer` decides whether a run gets the
figure and with which method; :func:`explain_results` computes the maps (the real encoders, never
cached features), which :func:`xmcore.report.explained_gallery` draws.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from xmcore.errors import XmcoreError
from xmcore.explain import Explanation, ExplainModel, explain

AUTO_METHOD = "gradcam"
"""The method of the figure when ``eval.explain`` is left unset: one forward and backward pass a result,
0.006 s at the quickstart's 64 px and 0.06 s for EfficientNet-Lite0 at 224 px (bench/explain.py), so a
dozen maps stay well under a second.  It explains CNNs only; other encoders get no figure unless
``eval.explain: true`` asks for one (then by :data:`FALLBACK_METHOD`, which any encoder allows)."""

FALLBACK_METHOD = "occlusion"


@dataclass
class ReportExplainer:
    """The encoders and the explainer the report's figure uses, for results of ``modality``.  The
    :class:`ExplainModel` is made when the figure is drawn (:func:`explain_results`), which gives the
    encoders back their training mode and gradient flags afterwards: they may be a live run's."""

    encoders: Mapping[str, Any]
    fusion: Any
    modality: str
    methods: list[tuple[Any, Any]]  # (component, params), tried in order on the first result
    auto: bool = True
    source: str = ""
    model: ExplainModel | None = field(default=None, repr=False)
    chosen: tuple[Any, Any] | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return (self.chosen or self.methods[0])[0].name

    def __call__(self, item: Any, target) -> Explanation:
        if self.chosen is not None:
            return explain(*self.chosen, self.model, self.modality, item, target)
        problems = []
        for component, params in self.methods:
            try:
                result = explain(component, params, self.model, self.modality, item, target)
            except XmcoreError as exc:
                problems.append(str(exc))
                continue
            self.chosen = (component, params)
            return result
        raise XmcoreError("; ".join(problems) or f"no explainer for {self.modality}")


def report_explainer(setting: bool | None, encoders: Mapping[str, Any], fusion, plugins, modality: str,
                     source: str = "") -> ReportExplainer | None:
    """The explainer for the report's figure over results of ``modality``, or ``None`` (with a note on stderr
    when the recipe asked for the figure).  ``setting`` is ``eval.explain``: ``False`` never; ``None`` (unset)
    with :data:`AUTO_METHOD` when it explains ``modality``; ``True`` with it or else :data:`FALLBACK_METHOD`."""
    if setting is False or modality not in encoders or plugins is None:
        return None
    registry = plugins["explainer"]
    names = [AUTO_METHOD] if setting is None else [AUTO_METHOD, FALLBACK_METHOD]
    methods = [(registry.get(n), registry.get(n).params()) for n in names if n in registry and registry.get(n).accepts(modality)]
    if not methods:
        if setting:
            print(f"note: eval.explain: no installed explainer of {' or '.join(names)} explains {modality}; "
                  "the report has no explained results", file=sys.stderr)
        return None
    return ReportExplainer(encoders, fusion, modality, methods, auto=setting is None, source=source)


@dataclass
class ExplainedRow:
    """One query of the figure: its index and item, its top results' indices, whether each is relevant,
    and each result's explanation."""

    query: int
    item: Any
    results: list[int]
    hits: list[bool]
    explanations: list[Explanation]


def explain_results(split, embeddings: Mapping[str, np.ndarray], explainer: ReportExplainer, queries: Sequence[int],
                    asked: str, k: int = 4) -> list[ExplainedRow]:
    """For each query of ``asked`` (indices into the split), its ``k`` top results of the explainer's modality by
    ``embeddings``, each explained against the query's embedding (computed again by the real encoder)."""
    from xmcore.data import materialize

    found = explainer.modality
    groups = {m: split.groups(m) for m in (asked, found)}
    rows = []
    with restoring([*explainer.encoders.values(), explainer.fusion]):
        explainer.model = ExplainModel(explainer.encoders, explainer.fusion, explainer.source)
        for q in queries:
            query = materialize(split.items[asked][q])
            target = explainer.model.target(asked, query)
            top = np.argsort(-(embeddings[found] @ embeddings[asked][q]), kind="stable")[:k]
            explained = [explainer(materialize(split.items[found][i]), target) for i in top]
            hits = [bool(h) for h in groups[found][top] == groups[asked][q]]
            rows.append(ExplainedRow(int(q), query, [int(i) for i in top], hits, explained))
    return rows


def restoring(modules: Sequence[Any]):
    """A context that gives ``modules`` back their device, training mode and ``requires_grad`` flags on
    leaving: the report explains with a run's own encoders, which :class:`ExplainModel` puts in evaluation
    mode and freezes, and which explaining needs on the CPU (where the raw items are preprocessed)."""
    from contextlib import contextmanager

    @contextmanager
    def context():
        devices = [(m, next(m.parameters(), None)) for m in modules]
        devices = [(m, p.device) for m, p in devices if p is not None]
        modes = [(m, m.training) for module in modules for m in module.modules()]
        grads = [(p, p.requires_grad) for module in modules for p in module.parameters()]
        for m, device in devices:
            if device.type != "cpu":
                m.cpu()
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training
            for p, needed in grads:
                p.requires_grad_(needed)
            for m, device in devices:
                if device.type != "cpu":
                    m.to(device)

    return context()
