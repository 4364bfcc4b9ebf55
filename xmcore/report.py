"""Visual reports: ``report.md`` and PNG figures in a run (or evaluation) directory.

* ``curves.png`` -- training and validation loss (and validation rsum) over training;
* ``modality.png`` -- the validation modality gap and a modality discriminator's accuracy over
  training (when the metrics include the gap, or the fusion has a discriminator);
* ``recall_at_k.png`` -- R@K for K = 1..100, both directions;
* ``projection.png`` -- a 2-D PCA of the common space coloured by modality (the modality gap);
* ``gallery.png`` -- between the split's first two modalities (images and text, say): for a few
  queries of the second their top-5 items of the first, correct ones framed in green, and for a few
  of the first their top-5 of the second, correct ones marked.  Any modality can be shown: items are
  drawn by :func:`xmcore.figures.draw_item` (images as pictures, strings as text, a plugin's item by
  its own ``draw(ax)``, e.g. a spectrogram);
* ``explained.png`` -- why (``eval.explain``): for the gallery's first three queries of the second
  modality, the top four results of the first, each under the heatmap of an explainer (Grad-CAM by
  default, :mod:`xmcore.explain.gallery`) with its score; the maps themselves in ``explained.npz``.

The embeddings of the evaluated split are kept as ``embeddings.npz`` (:mod:`xmcore.embeddings`) so that
``xmcore report`` can draw everything again.
"""

from __future__ import annotations

import csv
import io
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from xmcore.evaluation import Rankings, metrics_table
from xmcore.figures import draw_item
from xmcore.figures import pyplot as _plt
from xmcore.io import atomic_write_bytes, atomic_write_text

GREEN, RED, GREY = "#2ca02c", "#d62728", "#7f7f7f"
MODALITY_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


def _save(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def loss_curves(log: Path, path: Path) -> str | None:
    series = _log_series(log, ("train/loss", "val/loss", "val/rsum"))
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, colour in (("train/loss", "#1f77b4"), ("val/loss", "#ff7f0e")):
        if key in series:
            x, y = zip(*series[key])
            ax.plot(x, y, label=key, color=colour, marker="o" if key.startswith("val") else None, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if "val/rsum" in series:
        ax2 = ax.twinx()
        x, y = zip(*series["val/rsum"])
        ax2.plot(x, y, label="val/rsum", color=GREEN, marker="s", markersize=4)
        ax2.set_ylabel("validation rsum")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title("training")
    fig.tight_layout()
    return _save(fig, path)


def _log_series(log: Path, keys: tuple[str, ...]) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    if not log.is_file():
        return series
    with log.open() as f:
        for row in csv.DictReader(f):
            for key in keys:
                if row.get(key):
                    series.setdefault(key, []).append((float(row["step"]), float(row[key])))
    return series


def modality_curves(log: Path, path: Path) -> str | None:
    """The modality gap on the validation split and a modality discriminator's accuracy over training
    (the adversarial strategy's); ``None`` when the log has neither."""
    series = _log_series(log, ("val/gap", "train/disc_acc", "val/disc_acc"))
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {"train/disc_acc": ("#9467bd", None), "val/disc_acc": ("#8c564b", "o"), "val/gap": (GREEN, "s")}
    for key in ("train/disc_acc", "val/disc_acc"):
        if key in series:
            x, y = zip(*series[key])
            colour, marker = styles[key]
            ax.plot(x, y, label=key, color=colour, marker=marker, markersize=4, alpha=0.8)
    if "train/disc_acc" in series or "val/disc_acc" in series:
        ax.axhline(0.5, color=GREY, linestyle="--", linewidth=1, label="chance")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("discriminator accuracy")
        ax.legend(loc="upper left")
    if "val/gap" in series:
        ax2 = ax.twinx() if len(series) > 1 else ax
        x, y = zip(*series["val/gap"])
        ax2.plot(x, y, label="val/gap", color=GREEN, marker="s", markersize=4)
        ax2.set_ylabel("modality gap (validation)")
        ax2.set_ylim(bottom=0)
        ax2.legend(loc="upper right")
    ax.set_xlabel("step")
    ax.set_title("modality invariance over training")
    fig.tight_layout()
    return _save(fig, path)


def recall_curve(rankings: Rankings, path: Path, max_k: int = 100) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = np.arange(1, max_k + 1)
    for direction, r in rankings.items():
        ax.plot(ks, [(r.ranks <= k).mean() for k in ks], label=direction)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("R@K (hit rate)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("recall at K")
    fig.tight_layout()
    return _save(fig, path)


def projection(embeddings: Mapping[str, np.ndarray], path: Path, limit: int = 2000) -> str:
    rng = np.random.default_rng(0)
    picked = {m: e[rng.permutation(len(e))[:limit]] for m, e in embeddings.items()}
    stacked = np.concatenate(list(picked.values()))
    centred = stacked - stacked.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    centroids = {m: e.mean(axis=0) for m, e in embeddings.items()}
    names = list(centroids)
    gaps = {(a, b): float(np.linalg.norm(centroids[a] - centroids[b]))
            for n, a in enumerate(names) for b in names[n + 1:]}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    start = 0
    for n, (m, e) in enumerate(picked.items()):
        xy = coords[start : start + len(e)]
        start += len(e)
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.5, label=m, color=MODALITY_COLOURS[n % len(MODALITY_COLOURS)])
    ax.legend()
    if len(gaps) == 1:
        ax.set_title(f"common space, 2-D PCA; modality gap {next(iter(gaps.values())):.3f}")
    else:
        listed = ", ".join(f"{a}-{b} {gap:.3f}" for (a, b), gap in gaps.items())
        ax.set_title(f"common space, 2-D PCA; modality gaps\n{listed}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def gallery(split, embeddings: Mapping[str, np.ndarray], path: Path, queries: int = 4, k: int = 5,
            pair: Sequence[str] | None = None) -> str | None:
    """Top-k results for a few queries each way between two modalities, the split's first two or ``pair``:
    ``queries`` items of the second against the first's, then three of the first against the second's.
    Needs the split's raw items; ``None`` when the split or the embeddings lack one of the two."""
    first, second = pair or split.modalities[:2]
    if not all(m in embeddings and m in split.items for m in (first, second)):
        return None
    second_queries, first_queries = _gallery_queries(embeddings, first, second, queries)
    plan = [(second, q, first) for q in second_queries] + [(first, q, second) for q in first_queries]
    groups = {m: split.groups(m) for m in (first, second)}
    plt = _plt()
    fig, axes = plt.subplots(len(plan), k + 1, figsize=(2.1 * (k + 1), 2.3 * len(plan)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, (asked, q, found) in enumerate(plan):
        if draw_item(axes[row, 0], split.items[asked][q]):
            _picture_cell(axes[row, 0])
        axes[row, 0].set_title(f"{asked} query", fontsize=8)
        top = np.argsort(-(embeddings[found] @ embeddings[asked][q]), kind="stable")[:k]
        _results(axes[row, 1:], [split.items[found][i] for i in top], groups[found][top] == groups[asked][q])
    fig.suptitle("retrieval examples (green / ✓: a correct result)", fontsize=10)
    # No tight_layout: the long caption lists would shrink the thumbnails to nothing.
    fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=0.02, wspace=0.08, hspace=0.45)
    return _save(fig, path)


def _gallery_queries(embeddings: Mapping[str, np.ndarray], first: str, second: str, queries: int = 4):
    """The gallery's queries: ``queries`` of the second modality, three of the first (the same every time)."""
    rng = np.random.default_rng(0)
    second_queries = rng.choice(len(embeddings[second]), size=min(queries, len(embeddings[second])), replace=False)
    first_queries = rng.choice(len(embeddings[first]), size=min(3, len(embeddings[first])), replace=False)
    return second_queries, first_queries


EXPLAINED_QUERIES, EXPLAINED_RESULTS = 3, 4


def explained_gallery(split, embeddings: Mapping[str, np.ndarray], path: Path, explainer, pair: Sequence[str] | None = None,
                      queries: int = EXPLAINED_QUERIES, k: int = EXPLAINED_RESULTS) -> str | None:
    """The gallery's first ``queries`` queries of the second modality, each with its top ``k`` results of the first
    under their heatmaps (``explainer``: a :class:`xmcore.explain.gallery.ReportExplainer` for the first modality)
    and the score of each; the maps go to ``explained.npz`` beside the figure.  ``None`` (and a note) when there
    is nothing to explain or the explainer cannot explain this model."""
    from xmcore.errors import XmcoreError
    from xmcore.explain.gallery import explain_results
    from xmcore.explain.outputs import draw_map

    first, second = pair or split.modalities[:2]
    if explainer is None or explainer.modality != first or not all(m in embeddings and m in split.items for m in (first, second)):
        return None
    picked = _gallery_queries(embeddings, first, second)[0][:queries]
    try:
        rows = explain_results(split, embeddings, explainer, picked, second, k)
    except XmcoreError as exc:
        if not explainer.auto:  # asked for by the recipe: say why it is missing
            import sys

            print(f"note: eval.explain: the report has no explained results: {exc}", file=sys.stderr)
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(2.1 * (k + 1), 2.4 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, explained in zip(axes, rows):
        if draw_item(row[0], explained.item):
            _picture_cell(row[0])
        row[0].set_title(f"{second} query", fontsize=8)
        for rank, (ax, index, hit, explanation) in enumerate(zip(row[1:], explained.results, explained.hits,
                                                                  explained.explanations), start=1):
            ax.axis("on")
            draw_map(ax, split.items[first][index], explanation)
            ax.set_xlabel("")  # a canvas's axis names, without the ticks a thumbnail drops, would only crowd it
            ax.set_ylabel("")
            if not np.asarray(explanation.attributions).max() > 0:  # a blank heatmap is an answer too: say so
                ax.text(0.5, 0.06, "nothing here raises the score", transform=ax.transAxes, ha="center", fontsize=6,
                        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
            _picture_cell(ax, GREEN if hit else GREY)
            ax.set_title(f"#{rank} score {explanation.score:.3f}" + (" ✓" if hit else ""), fontsize=8,
                         color=GREEN if hit else "black")
    fig.suptitle(f"why these results? {explainer.method} heatmaps (red: raises the score most; green frame / ✓: "
                 "a correct result)", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.03, wspace=0.08, hspace=0.45)
    _save_maps(path.with_suffix(".npz"), rows, explainer.method)
    return _save(fig, path)


def _save_maps(path: Path, rows, method: str) -> None:
    """The figure's raw maps, ``map_<row>_<rank>`` (signed, as the explainer gave them), with each row's
    query index, its results' indices and scores, and the method."""
    arrays = {f"map_{r}_{n}": e.attributions for r, row in enumerate(rows) for n, e in enumerate(row.explanations)}
    arrays.update(query=np.array([row.query for row in rows]), results=np.array([row.results for row in rows]),
                  scores=np.array([[e.score for e in row.explanations] for row in rows], dtype=np.float32),
                  method=np.array(method))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _picture_cell(ax, frame: str | None = None) -> None:
    ax.axis("on")
    ax.set_xticks([])
    ax.set_yticks([])
    if frame is not None:
        for spine in ax.spines.values():
            spine.set_edgecolor(frame)
            spine.set_linewidth(4 if frame == GREEN else 1)


def _results(axes, items: list, hits: np.ndarray) -> None:
    """One query's ranked results along a row of axes: strings as one numbered list in the first cell,
    anything else one per cell, a correct one framed in green."""
    if all(isinstance(x, str) for x in items):
        lines = [f"{rank}. {'✓' if hit else '·'} " + textwrap.shorten(x, 60)
                 for rank, (x, hit) in enumerate(zip(items, hits), start=1)]
        axes[0].text(0.05, 0.5, "\n".join(lines), fontsize=8, va="center", transform=axes[0].transAxes)
        return
    for rank, (ax, x, hit) in enumerate(zip(axes, items, hits), start=1):
        if draw_item(ax, x):
            _picture_cell(ax, GREEN if hit else GREY)
        ax.set_title(f"#{rank}" + (" correct" if hit else ""), fontsize=8, color=GREEN if hit else "black")


def write_report(
    out_dir: Path,
    title: str,
    metrics: Mapping[str, float],
    rankings: Rankings,
    embeddings: Mapping[str, np.ndarray],
    split=None,
    log: Path | None = None,
    pair: Sequence[str] | None = None,
    explainer=None,
) -> Path:
    """Draw the figures and write ``report.md`` beside them; returns the report's path.  The gallery shows
    ``pair`` (two modalities), by default the split's first two; with ``explainer``
    (:func:`xmcore.explain.gallery.report_explainer`) its results are explained in a second figure."""
    figures = []
    if log is not None and (name := loss_curves(log, out_dir / "curves.png")):
        figures.append(("Training", name))
    if log is not None and (name := modality_curves(log, out_dir / "modality.png")):
        figures.append(("Modality gap and discriminator", name))
    figures.append(("Recall at K", recall_curve(rankings, out_dir / "recall_at_k.png")))
    figures.append(("The common space", projection(embeddings, out_dir / "projection.png")))
    if split is not None and (name := gallery(split, embeddings, out_dir / "gallery.png", pair=pair)):
        figures.append(("Retrieval examples", name))
    if split is not None and (name := explained_gallery(split, embeddings, out_dir / "explained.png", explainer, pair)):
        figures.append(("Why these results?", name))
    sizes = ", ".join(f"{len(e)} {m}" for m, e in embeddings.items())
    parts = [f"# {title}", "", f"Evaluated on {sizes}.", "", metrics_table(metrics)]
    for heading, name in figures:
        parts += [f"## {heading}", "", f"![{heading}]({name})", ""]
    return atomic_write_text(out_dir / "report.md", "\n".join(parts))


def regenerate(run_dir: Path, plugins) -> Path:
    """``xmcore report RUN_DIR``: redraw the report from the run's files (and its dataset, for the gallery)."""
    import json

    import torch

    from xmcore.embeddings import load_embeddings
    from xmcore.errors import XmcoreError
    from xmcore.evaluation import Needs, rank_directions
    from xmcore.recipe import load_recipe, validate

    needed = [run_dir / n for n in ("embeddings.npz", "metrics.json")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise XmcoreError(f"{run_dir}: missing {', '.join(missing)}; run `xmcore run` or `xmcore evaluate` first")
    loaded = load_embeddings(run_dir / "embeddings.npz", what="report")  # this format or an older run's
    emb, modalities = loaded.embeddings, loaded.split.modalities
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the figures read first relevant ranks only
    rankings = rank_directions({m: torch.from_numpy(e) for m, e in emb.items()}, loaded.split, needs=Needs())
    split = None
    recipe_path = run_dir / "recipe.yaml"
    if recipe_path.is_file():
        from xmcore.run import build_data

        recipe = validate(load_recipe(recipe_path), plugins)
        env_path = run_dir / "environment.json"
        env = json.loads(env_path.read_text()) if env_path.is_file() else {}
        try:
            candidate = build_data(recipe, Path(env.get("recipe_dir") or run_dir)).splits[recipe.eval.split]
            if all(len(candidate.items[m]) == len(emb[m]) for m in modalities):
                split = candidate
        except (XmcoreError, KeyError):
            split = None  # the data moved: draw everything but the gallery
    explainer = _run_explainer(run_dir, recipe, plugins, split) if split is not None else None
    title = f"{run_dir.name}"
    return write_report(run_dir, title, metrics, rankings, emb, split, run_dir / "logs" / "metrics.csv",
                        explainer=explainer)


def _run_explainer(run_dir: Path, recipe, plugins, split):
    """The report's explainer for a finished run (its best checkpoint), or ``None``: ``eval.explain`` false, no
    checkpoint (an evaluation's folder), or no method for the run's first modality."""
    import sys

    from xmcore.errors import XmcoreError
    from xmcore.explain import load_model
    from xmcore.explain.gallery import report_explainer

    setting, first = recipe.eval.explain, split.modalities[0]
    if setting is False or report_explainer(setting, {first: None}, None, plugins, first) is None:
        return None
    try:
        model = load_model(run_dir, plugins)
    except XmcoreError as exc:
        if setting:
            print(f"note: eval.explain: the report has no explained results: {exc}", file=sys.stderr)
        return None
    return report_explainer(setting, model.encoders, model.fusion, plugins, first, model.source)


COMPARE_COLUMNS = 3
"""At most this many differing recipe keys become table columns; every differing key is also listed below."""


def compare(run_dirs: list[Path], out_dir: Path) -> tuple[str, Path]:
    """A side-by-side table of runs' metrics, the recipe keys that differ as a list, and a bar chart.

    When few keys differ (at most :data:`COMPARE_COLUMNS`) they are also columns of the table and the
    chart's legend; runs of different recipes differ in many keys, and then the runs go by name.
    """
    import json

    from xmcore.errors import XmcoreError
    from xmcore.evaluation import format_metric
    from xmcore.recipe import read_yaml

    runs = []
    for d in run_dirs:
        if not (d / "metrics.json").is_file():
            raise XmcoreError(f"{d}: no metrics.json; is it a finished xmcore run directory?")
        recipe = read_yaml((d / "recipe.yaml").read_text(encoding="utf-8"), str(d / "recipe.yaml")) if (d / "recipe.yaml").is_file() else {}
        try:
            metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise XmcoreError(f"{d / 'metrics.json'}: not readable JSON ({exc}); run `xmcore evaluate {d}` to write it again") from None
        runs.append((d, metrics, _flatten(recipe if isinstance(recipe, dict) else {})))
    keys = sorted({k for _, _, r in runs for k in r})
    differing = [k for k in keys if len({json.dumps(r.get(k, _UNSET), sort_keys=True) for _, _, r in runs}) > 1
                 and k != "name"]
    columns = differing if len(differing) <= COMPARE_COLUMNS else []
    ids = list(dict.fromkeys(k for _, m, _ in runs for k in m))
    header = ["run", *columns, *ids]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|---" * len(header) + "|"]
    for d, m, r in runs:
        cells = [_show(d.name), *(_show(r.get(k, _UNSET)) for k in columns),
                 *(format_metric(m[i], i) if i in m else "" for i in ids)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if differing:
        lines += ["", f"Recipe keys that differ ({len(differing)}):"]
        for k in differing:
            lines.append(f"- {_show(k)}: " + "; ".join(f"{_show(r.get(k, _UNSET))} ({_show(d.name)})" for d, _, r in runs))
    else:
        lines += ["", "The runs' recipes are the same (apart from their names)."]
    table = "\n".join(lines) + "\n"

    plt = _plt()
    shown = [i for i in ids if "/R@" in i] or ids[:6]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(shown) * max(1, len(runs)) / 2), 4))
    width = 0.8 / len(runs)
    for n, (d, m, r) in enumerate(runs):
        label = (", ".join(f"{_show(k)}={_show(r.get(k, _UNSET))}" for k in columns) or _show(d.name)).replace("$", r"\$")
        ax.bar(np.arange(len(shown)) + n * width, [m.get(i, 0) for i in shown], width, label=label)
    ax.set_xticks(np.arange(len(shown)) + width * (len(runs) - 1) / 2, shown, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("runs compared")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    chart = out_dir / "comparison.png"
    _save(fig, chart)
    atomic_write_text(out_dir / "comparison.md", "# Runs compared\n\n" + table + "\n![chart](comparison.png)\n")
    return table, chart


_UNSET = "(not set)"


def _show(value: Any) -> str:
    """A recipe value on one line: strings as they are, other values as JSON; control characters
    (a tab separator, a newline) escaped as ``\\t``, ``\\n``, so no table, list or chart shows them raw."""
    import json
    import unicodedata

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch).startswith("C") else ch
                   for ch in text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}
