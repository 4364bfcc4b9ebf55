"""The ``xmcore`` command line.

Torch and Lightning are imported only by the commands that train, so ``--help``,
``plugins`` and ``validate`` stay quick.  Errors caused by input (a recipe, an
override, a path) print one message per problem and exit non-zero without a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xmcore import __version__
from xmcore.errors import XmcoreError

OVERRIDE_HELP = "override a recipe key: dotted.key=value (value parsed as YAML), e.g. fusion.name=linear"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xmcore", description="Cross-modal retrieval: train, evaluate and compare.")
    parser.add_argument("--version", action="version", version=f"xmcore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train a recipe with Lightning and evaluate retrieval")
    run.add_argument("recipe", help="the recipe YAML file")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    run.add_argument("--out", type=Path, help="run directory (default: runs/<recipe name>-<timestamp>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")

    sw = sub.add_parser("sweep", help="run a grid of overrides (KEY=V1,V2,...) and compare the settings")
    sw.add_argument("recipe")
    sw.add_argument("axes", nargs="+", metavar="KEY=V1,V2", help="e.g. fusion.name=linear,nonlinear seed=0,1,2")
    sw.add_argument("--out", type=Path, help="sweep directory (default: runs/sweep-<recipe name>-<timestamp>)")
    sw.add_argument("--max-runs", type=int, default=None, metavar="N",
                    help="run a grid of up to N cells (default: 256; a bigger grid is refused as a likely typo)")

    val = sub.add_parser("validate", help="check a recipe (overrides applied) without training")
    val.add_argument("recipe")
    val.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    val.add_argument("--print", action="store_true", dest="show", help="print the resolved recipe")

    ev = sub.add_parser("evaluate", help="evaluate a trained run (RUN_DIR), or embeddings computed anywhere (--embeddings)")
    ev.add_argument("run_dir", nargs="?", type=Path, metavar="RUN_DIR", help="a directory written by `xmcore run`")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="with RUN_DIR: change the data or eval keys, e.g. data.name=csv data.path=other.tsv")
    ev.add_argument("--embeddings", type=Path, metavar="NPZ",
                    help="a run's embeddings.npz, or image (N x d), text (M x d), text_to_image (M); "
                    "optional image_labels, text_labels")
    ev.add_argument("--out", type=Path, help="directory for metrics.json and metrics.md "
                    "(default with RUN_DIR: RUN_DIR/evaluations/<timestamp>; required with --embeddings)")
    ev.add_argument("--metrics", metavar="YAML", help="metric list as YAML, e.g. '[{name: recall, k: [1, 5]}]' "
                    "(default: recall, rank, map, ndcg@10, modality-gap)")

    rep = sub.add_parser("report", help="draw a run's report (report.md and figures) again")
    rep.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    cmp_ = sub.add_parser("compare", help="compare runs: metrics side by side with the recipe keys that differ")
    cmp_.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    cmp_.add_argument("--out", type=Path, help="where comparison.md and comparison.png go (default: runs/compare-<timestamp>)")

    cache = sub.add_parser("cache", help="the on-disk cache of frozen-encoder features")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    cls = cache_sub.add_parser("ls", help="list cache entries")
    clr = cache_sub.add_parser("clear", help="remove cache entries (all, or the keys given)")
    clr.add_argument("keys", nargs="*", metavar="KEY")
    for p in (cls, clr):
        p.add_argument("--dir", help="cache folder (default: $XMCORE_CACHE_DIR, else ~/.cache/xmcore/features)")

    data = sub.add_parser("data", help="look at a recipe's dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    insp = data_sub.add_parser("inspect", help="per split: items, captions per image, labels, problems, examples")
    insp.add_argument("recipe")
    insp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    insp.add_argument("--grid", type=Path, metavar="PNG", help="also write a picture of sample items (images; spectrograms or whatever a plugin's items draw) with captions")
    insp.add_argument("--split", help="the split the grid shows (default: train)")

    idx = sub.add_parser("index", help="embed a gallery with a trained run and write a search index (FAISS)",
                         epilog="On several processes or machines: trainer.devices=N trainer.strategy=ddp "
                         "[trainer.num_nodes=M trainer.accelerator=gpu trainer.precision=...] embeds with Lightning's "
                         "predict, each process writing its own shards into INDEX_DIR (a shared file system across "
                         "machines) and rank 0 the index; the index is the one a single process writes.")
    idx.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a directory written by `xmcore run`")
    idx.add_argument("--out", type=Path, required=True, metavar="INDEX_DIR", help="the index folder to write")
    idx.add_argument("--data", nargs="+", default=[], metavar="KEY=VALUE",
                     help="the gallery as recipe keys (default: the run's own dataset), e.g. data.name=imagefolder data.root=photos")
    idx.add_argument("--split", default="all", help="comma-separated splits to index, or 'all' (default)")
    idx.add_argument("--modality", default="all", help="comma-separated modalities to index, or 'all' (default)")
    idx.add_argument("--index", default=None, choices=["flat", "hnsw", "ivfpq"], dest="kind",
                     help="exact inner product (flat, default) or approximate (hnsw, ivfpq; the default with "
                     "--on-disk or --max-memory)")
    idx.add_argument("--hnsw-m", type=int, default=32, help="HNSW: links per node (default 32)")
    idx.add_argument("--ef-construction", type=int, default=200, help="HNSW: build-time candidates (default 200)")
    idx.add_argument("--ef-search", type=int, default=128, help="HNSW: search-time candidates (default 128)")
    idx.add_argument("--nlist", type=int, default=1024, help="IVF-PQ: coarse cells (default 1024; about sqrt(N))")
    idx.add_argument("--pq-m", type=int, default=32, help="IVF-PQ: sub-quantizers, must divide the dimension (default 32)")
    idx.add_argument("--nbits", type=int, default=8, help="IVF-PQ: bits per code (default 8)")
    idx.add_argument("--nprobe", type=int, default=32, help="IVF-PQ: cells visited per query (default 32)")
    idx.add_argument("--refine", type=int, default=0, help="IVF-PQ: re-rank REFINE*k candidates exactly (default 0: off)")
    idx.add_argument("--shard-size", type=int, default=50_000, help="rows per embeddings shard (default 50000)")
    idx.add_argument("--max-memory", metavar="SIZE",
                     help="IVF-PQ: a memory budget (e.g. 2GB) that chooses --nlist, --pq-m and the training sample as "
                     "autofaiss does, and bounds the build: vectors are read from the shards a chunk at a time; below 10,000 "
                     "vectors, an exact flat index where it fits")
    idx.add_argument("--on-disk", action="store_true",
                     help="IVF-PQ: inverted lists in an .ivfdata file (FAISS OnDiskInvertedLists), memory-mapped by a search")
    idx.add_argument("--shards", type=int, default=1, metavar="K",
                     help="split each modality's FAISS index into K files of consecutive rows, searched together "
                     "(a thread each) and merged by FAISS's IndexShards (default 1)")
    idx.add_argument("--add", action="store_true", help="add the items to the existing index in INDEX_DIR")

    srch = sub.add_parser("search", help="query an index with words or a file (an image, or any modality it reads)",
                          epilog="A query file of any other modality whose encoder reads files is given the same way: "
                          "--<MODALITY> FILE, named as the index names the modality (its manifest.json lists them).")
    srch.add_argument("index_dir", type=Path, metavar="INDEX_DIR")
    query = srch.add_mutually_exclusive_group()
    query.add_argument("--text", help="find items described by this text")
    query.add_argument("--image", type=Path, metavar="FILE", help="find items like this image file")
    srch.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    srch.add_argument("--target", help="the modality to search (default: the other one)")
    srch.add_argument("--json", action="store_true", help="print JSON instead of a table")

    srv = sub.add_parser("serve", help="serve an index: an HTTP API and a search page (FastAPI + uvicorn)")
    srv.add_argument("index_dir", type=Path, metavar="INDEX_DIR")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    srv.add_argument("--batch-wait-ms", type=float, default=2.0, metavar="MS", help="collect concurrent searches for "
                     "up to MS milliseconds and embed and search them as one batch (default 2; 0: one at a time)")
    srv.add_argument("--max-batch", type=int, default=64, help="at most this many searches in a batch (default 64)")
    srv.add_argument("--body-timeout", type=float, default=30.0, metavar="S", help="a request body (an upload) must "
                     "arrive whole within S seconds, else 408 (default 30)")

    exp = sub.add_parser("explain", help="which pixels of a picture and which words of a text make them match",
                         description="Explain a (picture, text) pair with a trained model: a heatmap over the picture "
                         "(overlay.png, the raw map.npy) and each word's attribution (words.json, words.html).",
                         epilog="A file of any other modality whose encoder reads files is given the same way: "
                         "--<MODALITY> FILE, named as the model names the modality; its map lies over what the "
                         "encoder reads (e.g. a spectrogram).")
    exp.add_argument("model_dir", type=Path, metavar="RUN_DIR_OR_INDEX", help="a run directory or an index folder")
    exp.add_argument("--image", type=Path, metavar="FILE", help="the picture")
    exp.add_argument("--text", required=True, help="the text, e.g. \"a red circle\"")
    exp.add_argument("--method", help="how the picture is explained: gradcam (default), occlusion, "
                     "integrated-gradients, or any installed explainer (`xmcore plugins` lists them; default for "
                     "another modality: the first that explains it)")
    exp.add_argument("--text-method", default="integrated-gradients", help="how the words are explained (default "
                     "integrated-gradients)")
    exp.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="a parameter of the picture method, e.g. --param layer=model.layer3 (gradcam); repeatable")
    exp.add_argument("--out", type=Path, help="folder for the files (default: explanations/<picture name>-<time>)")
    exp.add_argument("--top", type=int, default=5, help="how many words to print (default 5)")

    plug = sub.add_parser("plugins", help="list installed plugins and the components they register")
    plug.add_argument("--json", action="store_true", help="print JSON instead of text")
    for command in (run, sw, ev, rep, idx, srch, srv, exp):
        command.add_argument("--verbose", "-v", action="store_true",
                             help="also show Lightning's notices that need no action (GPU/TPU available, tips, "
                             "deprecations inside Lightning)")
    return parser


# Where each command keeps its ``key=value`` words (overrides, or sweep axes).
_KEY_VALUE_DEST = {"run": "overrides", "validate": "overrides", "evaluate": "overrides", "data": "overrides",
                   "sweep": "axes", "index": "data"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` words may come before, between or after the options.

    argparse fills a ``nargs="*"`` positional from the first run of positionals only, so
    ``run R --out D k=v`` would leave ``k=v`` unrecognised.  Such leftover words are added,
    in order, to the command's overrides; anything else left over is still an error.
    """
    parser = _parser()
    argv, query_files = _query_file_options(parser, list(sys.argv[1:] if argv is None else argv))
    args, extras = parser.parse_known_args(argv)
    if args.command in _FILE_COMMANDS:
        args.query_files = query_files + ([("image", args.image)] if args.image is not None else [])
    dest = _KEY_VALUE_DEST.get(args.command)
    rest = []
    for word in extras:
        if dest and not word.startswith("-") and "=" in word:
            getattr(args, dest).append(word)
        else:
            rest.append(word)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


_FILE_COMMANDS = ("search", "explain")  # the commands that take ``--<modality> FILE``


def _query_file_options(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[tuple[str, Path]]]:
    """``search``'s and ``explain``'s ``--<modality> FILE`` options for modalities the parser cannot know in
    advance (they are the model's), taken out of ``argv`` wherever they stand: ``(the other words, [(modality,
    FILE), ...])``.

    An option of the command's own, or an abbreviation argparse would expand to one, is left to argparse."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    at = next((i for i, w in enumerate(argv) if w in _FILE_COMMANDS), None)
    if at is None or any(not w.startswith("-") for w in argv[:at]):  # not the command, or an argument of another
        return argv, []
    known = [o for o in sub.choices[argv[at]]._option_string_actions if o.startswith("--")]
    rest, found, words = argv[: at + 1], [], iter(argv[at + 1:])
    for word in words:
        name, eq, value = word.partition("=")
        modality = name[2:]
        if (not name.startswith("--") or not modality[:1].isalpha() or not modality.replace("-", "").replace("_", "").isalnum()
                or any(o.startswith(name) for o in known)):
            rest.append(word)
            continue
        if not eq:
            value = next(words, None)
            if value is None or value.startswith("--"):
                parser.error(f"argument {name}: expected a file")
        found.append((modality, Path(value)))
    return rest, found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from xmcore.quiet import configure

    configure(verbose=getattr(args, "verbose", False))
    try:
        commands = {"run": cmd_run, "validate": cmd_validate, "plugins": cmd_plugins, "data": cmd_data,
                    "evaluate": cmd_evaluate, "report": cmd_report, "compare": cmd_compare, "cache": cmd_cache,
                    "sweep": cmd_sweep, "index": cmd_index, "search": cmd_search,
                    "serve": cmd_serve, "explain": cmd_explain}
        return commands[args.command](args)
    except XmcoreError as exc:
        print(f"error: {exc}" if "\n" not in str(exc) else f"error:\n{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def _load(args):
    from xmcore.plugins import load_plugins
    from xmcore.recipe import load_recipe, validate

    plugins = load_plugins()
    loaded = load_recipe(args.recipe, args.overrides)
    return plugins, loaded, validate(loaded, plugins)


def cmd_validate(args) -> int:
    import yaml

    _, _, recipe = _load(args)
    if args.show:
        print(yaml.safe_dump(recipe.resolved(), sort_keys=False), end="")
    print(f"{args.recipe}: ok", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    from xmcore.evaluation import metrics_table
    from xmcore.run import default_run_dir, train_and_evaluate

    plugins, loaded, recipe = _load(args)
    run_dir = args.out or default_run_dir(recipe)
    metrics = train_and_evaluate(recipe, plugins, loaded.base_dir, run_dir, resume=args.resume)
    if metrics is None:  # a DDP process other than rank 0
        return 0
    print()
    print(f"{recipe.name}: retrieval on the '{recipe.eval.split}' split")
    print(metrics_table(metrics))
    print(f"run directory: {run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    if (args.run_dir is None) == (args.embeddings is None):
        raise XmcoreError("evaluate: give either RUN_DIR or --embeddings FILE.npz")
    if args.run_dir is not None:
        return _evaluate_run(args)
    if args.out is None:
        raise XmcoreError("evaluate --embeddings: --out DIR is required")
    from pydantic import TypeAdapter, ValidationError

    from xmcore.errors import RecipeError
    from xmcore.evaluation import evaluate, load_embeddings_file, metrics_table
    from xmcore.io import atomic_write_text, write_json
    from xmcore.plugins import load_plugins
    from xmcore.recipe import DEFAULT_METRICS, MetricSection, read_yaml, validate_component
    from xmcore.registry import BuildContext

    plugins = load_plugins()
    raw = read_yaml(args.metrics, "--metrics") if args.metrics else DEFAULT_METRICS
    try:
        sections = TypeAdapter(list[MetricSection]).validate_python(raw)
    except ValidationError as exc:
        raise RecipeError([f"--metrics: expected a YAML list of {{name: ..., params}}: {str(exc).splitlines()[0]}"]) from None
    problems = [p for i, s in enumerate(sections) for p in validate_component(s, f"--metrics.{i}", plugins)]
    if problems:
        raise RecipeError(problems)
    metrics = [s.component.build(s.params, BuildContext()) for s in sections]
    split, embeddings = load_embeddings_file(args.embeddings)
    rankings, values = evaluate(embeddings, split, metrics)
    write_json(args.out / "metrics.json", values)
    atomic_write_text(args.out / "metrics.md", f"# {args.embeddings.name}\n\n" + metrics_table(values))
    from xmcore.report import write_report

    write_report(args.out, args.embeddings.name, values, rankings, {m: e.numpy() for m, e in rankings.embeddings.items()})
    print(metrics_table(values))
    print(f"written: {args.out / 'metrics.json'}")
    return 0


def _csv(value: str) -> list[str] | None:
    return None if value == "all" else [v.strip() for v in value.split(",") if v.strip()]


def _index_kind(args) -> str:
    """``--index``, ivfpq by default where --on-disk or --max-memory ask for it; they build nothing else."""
    if args.kind in ("flat", "hnsw") and (args.on_disk or args.max_memory):
        raise XmcoreError(f"--on-disk and --max-memory plan the index themselves (IVF-PQ; exact flat for a gallery "
                          f"under 10,000 vectors that fits); --index {args.kind} holds every vector in memory: leave "
                          "them out, or use --index ivfpq (or no --index)")
    return args.kind or ("ivfpq" if args.on_disk or args.max_memory else "flat")


def _max_memory(args) -> int | None:
    from xmcore.search.ivf import parse_memory

    if args.shards < 1:
        raise XmcoreError(f"--shards: expected 1 or more FAISS files, got {args.shards}")
    if args.add and (args.on_disk or args.max_memory or args.shards > 1):
        raise XmcoreError("--add keeps the index's own FAISS files; --on-disk, --shards and --max-memory shape a new index")
    return parse_memory(args.max_memory) if args.max_memory else None


def cmd_index(args) -> int:
    from xmcore.search import IndexOptions, build_index
    from xmcore.plugins import load_plugins

    for flag in ("shard_size", "hnsw_m", "ef_construction", "ef_search", "nlist", "pq_m", "nbits", "nprobe"):
        if getattr(args, flag) <= 0:
            raise XmcoreError(f"--{flag.replace('_', '-')}: expected a positive number, got {getattr(args, flag)}")
    if args.nbits > 16:
        raise XmcoreError(f"--nbits: expected 1 to 16 bits per code, got {args.nbits}")
    if args.refine < 0:
        raise XmcoreError(f"--refine: expected 0 (off) or a positive factor, got {args.refine}")
    options = IndexOptions(kind=_index_kind(args), hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                           ef_search=args.ef_search, nlist=args.nlist, pq_m=args.pq_m, nbits=args.nbits,
                           nprobe=args.nprobe, refine=args.refine, shards=args.shards, on_disk=args.on_disk,
                           max_memory=_max_memory(args))
    manifest = build_index(args.run_dir, args.out, load_plugins(), overrides=args.data, splits=_csv(args.split),
                           modalities=_csv(args.modality), options=options, shard_size=args.shard_size, add=args.add)
    if manifest is None:  # a process other than rank 0 of a build on several: rank 0 reports
        return 0
    for modality, entry in manifest["modalities"].items():
        print(f"{modality}: {entry['count']} items, d={entry['dim']}, {entry['index']['type']} index")
    print("preprocessing (queries are read the same way):")
    for modality, description in manifest["model"]["preprocessing"].items():
        print(f"  {modality}: {description}")
    print(f"index: {args.out}")
    return 0


def cmd_search(args) -> int:
    from xmcore.search import SearchIndex, results_table
    from xmcore.plugins import load_plugins

    if not 1 <= args.k <= 1000:
        raise XmcoreError("-k: expected 1 to 1000 results")
    queries = args.query_files + ([("text", args.text)] if args.text is not None else [])
    if len(queries) != 1:
        raise XmcoreError("search: give one query: --text WORDS, or a file as --<MODALITY> FILE (e.g. --image photo.png)")
    (modality, query), = queries
    if modality == "text" and not query.strip():
        raise XmcoreError("--text: the query is empty")
    index = SearchIndex(args.index_dir, load_plugins())
    if modality != "text":
        query = _read_query_file(index, modality, query)
    results = index.search(modality, query, args.k, args.target)
    print(json.dumps(results, indent=2, ensure_ascii=False) if args.json else results_table(results), end="")
    for note in index.query_warnings(modality, query):  # on stderr: the JSON on stdout stays a list of results
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from xmcore.plugins import load_plugins
    from xmcore.search.server import serve

    if not 0 < args.port < 65536:
        raise XmcoreError("--port: expected 1 to 65535")
    if not 0 <= args.batch_wait_ms <= 1000:
        raise XmcoreError("--batch-wait-ms: expected 0 (no batching) to 1000 milliseconds")
    if args.max_batch < 1:
        raise XmcoreError("--max-batch: expected 1 or more")
    if not args.body_timeout > 0:
        raise XmcoreError("--body-timeout: expected a number of seconds above 0")
    serve(args.index_dir, load_plugins(), host=args.host, port=args.port, batch_wait_ms=args.batch_wait_ms,
          max_batch=args.max_batch, body_timeout_s=args.body_timeout)
    return 0


def _read_query_file(index, modality: str, path: Path):
    """``--<modality> FILE`` as a raw item, read by the index's encoder of that modality."""
    if modality not in index.model.encoders:
        import difflib

        takes = [f"--{m} FILE" for m in index.file_modalities]
        close = difflib.get_close_matches(f"--{modality}", [f"--{m}" for m in index.model.encoders] + ["--target", "--json"],
                                          n=1, cutoff=0.75)  # a typo, not another modality's name
        hint = f"did you mean '{close[0]}'? " if close else ""
        words = ["--text WORDS"] if "text" in index.model.encoders else []
        raise XmcoreError(f"--{modality}: this index has no '{modality}' model; {hint}it takes "
                          + " or ".join(words + takes))
    from xmcore.media import read_query_file

    return read_query_file(path, lambda fh: index.read_query(modality, fh), f"--{modality}")


def cmd_sweep(args) -> int:
    from xmcore.plugins import load_plugins
    from xmcore.sweep import MAX_RUNS, run_sweep

    if args.max_runs is not None and args.max_runs < 1:
        raise XmcoreError(f"--max-runs: expected a positive number of cells, got {args.max_runs}")
    out, results = run_sweep(args.recipe, args.axes, args.out, load_plugins(), args.max_runs or MAX_RUNS)
    if any("metrics" in r and r["metrics"] is None for r in results):  # a DDP process other than rank 0
        return 0
    print((out / "sweep.md").read_text())
    failed = sum("error" in r for r in results)
    print(f"sweep directory: {out} ({len(results) - failed} cells ran, {failed} failed)")
    return 1 if failed == len(results) else 0


def cmd_cache(args) -> int:
    import time

    from xmcore.cache import cache_dir, clear, list_entries

    root = cache_dir(args.dir)
    if args.cache_command == "clear":
        print(f"removed {clear(root, args.keys)} entries from {root}")
        return 0
    entries = list_entries(root)
    print(f"{root}: {len(entries)} entries, {sum(e['bytes'] for e in entries) / 1e6:.1f} MB")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["created"] or 0))
        print(f"  {e['key']}  {e['encoder']} [{e['modality']}]  {e['rows']} x {e['dim']}  {e['bytes'] / 1e6:.1f} MB  {when}")
    return 0


def cmd_report(args) -> int:
    from xmcore.plugins import load_plugins
    from xmcore.report import regenerate

    print(f"written: {regenerate(args.run_dir, load_plugins())}")
    return 0


def cmd_compare(args) -> int:
    import time

    from xmcore.report import compare

    out = args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    table, chart = compare(args.run_dirs, out)
    print(table)
    print(f"written: {out / 'comparison.md'}, {chart}")
    return 0


def _evaluate_run(args) -> int:
    from xmcore.evaluation import metrics_table
    from xmcore.plugins import load_plugins
    from xmcore.run import evaluate_run

    if args.metrics:
        raise XmcoreError("evaluate RUN_DIR: choose metrics with eval.metrics=... overrides, not --metrics")
    metrics, out = evaluate_run(args.run_dir, args.overrides, load_plugins(), args.out)
    print(metrics_table(metrics))
    print(f"written: {out / 'metrics.json'}")
    return 0


def cmd_data(args) -> int:
    from xmcore.inspection import grid, inspect, summarize
    from xmcore.registry import BuildContext

    _, loaded, recipe = _load(args)
    section = recipe.data
    data = section.component.build(section.params, BuildContext(seed=recipe.seed, base_dir=loaded.base_dir))
    split = args.split or "train"
    if (args.grid or args.split) and split not in data.splits:  # checked before anything is printed
        raise XmcoreError(f"--split: the dataset has no split '{split}'; it has: {', '.join(data.splits)}")
    data, reports = inspect(data)
    print(summarize(data, reports))
    if args.grid:
        print(f"\ngrid: {grid(data, args.grid, split)}")
    return 0


def cmd_plugins(args) -> int:
    from xmcore.plugins import load_plugins
    from xmcore.registry import KINDS

    plugins = load_plugins()
    by_plugin: dict[str, dict[str, list]] = {name: {} for name in plugins.infos}
    for kind in KINDS:
        for comp in plugins[kind]:
            by_plugin.setdefault(comp.plugin, {}).setdefault(kind, []).append(comp)

    if args.json:
        out = []
        for name, kinds in by_plugin.items():
            info = plugins.infos.get(name)
            out.append(
                {
                    "name": name,
                    "distribution": info.distribution if info else name,
                    "version": info.version if info else None,
                    "error": info.error if info else None,
                    "components": {
                        kind: [
                            {"name": c.name, "help": c.help, "modalities": c.modalities, "params": c.describe_params()}
                            for c in comps
                        ]
                        for kind, comps in kinds.items()
                    },
                }
            )
        print(json.dumps(out, indent=2, default=str))
        return 0

    for name, kinds in by_plugin.items():
        info = plugins.infos.get(name)
        head = f"{info.distribution} {info.version}" if info else name
        print(head if info and info.distribution == name else f"{head}  (entry point '{name}')")
        if info and info.error:
            print(f"  FAILED TO IMPORT: {info.error}")
        for kind, comps in kinds.items():
            for c in comps:
                mods = f" [{', '.join(c.modalities)}]" if c.modalities else ""
                print(f"  {kind} {c.name}{mods}: {c.help}")
                for p in c.describe_params():
                    default = "required" if p["required"] else f"= {p['default']!r}"
                    print(f"      {p['name']}: {p['type']} {default}" + (f"  -- {p['help']}" if p["help"] else ""))
        print()
    return 0


def cmd_explain(args) -> int:
    from xmcore.explain.command import explain_file, summary
    from xmcore.plugins import load_plugins

    if args.top < 0:
        raise XmcoreError("--top: expected 0 or more words")
    if len(args.query_files) != 1:
        raise XmcoreError("explain: give one item to explain: --image FILE, or a file of another modality as "
                          "--<MODALITY> FILE")
    (modality, path), = args.query_files
    result = explain_file(args.model_dir, modality, path, args.text, load_plugins(), args.method, args.text_method,
                          args.param, args.out)
    print(summary(result, args.top))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
