"""``xmcore serve``: an HTTP API and one web page over an index folder (FastAPI + uvicorn).

    GET  /                      the search page (a search box, an example upload per modality, a results grid)
    GET  /health                status, item counts, index types, query file modalities, preprocessing
    GET  /search?text=...&k=10[&target=<modality>]
    POST /search[?k=10&target=...] multipart form: <modality>=<file>, one file in a field named by its
                                modality (image=..., or any modality whose encoder reads files); k and
                                target in the form or the query string
    GET  /items/{id}            an item's metadata (with media_url and media_type when it has a file to show)
    GET  /items/{id}/media      an item's file, served as its media type: only files that the index lists,
                                looked up by id
    GET  /explain?item=ID&text=...[&method=gradcam][&format=json|png]
                                why a gallery item matches a text: the map over the item (a picture) and the
                                text's word attributions, as JSON or as the picture under its heatmap (PNG)

Bounded input: a query of at most ``MAX_QUERY_CHARS`` characters, k of 1 to ``MAX_K``, uploads of
at most ``MAX_UPLOAD_BYTES``, and whatever the modality's reader bounds (an image's pixels, a clip's
duration: 413 with the reason); anything else is a 4xx whose body is always ``{"detail": "<one line>"}``,
saying what was expected without echoing the input back.  The OpenAPI schema (``/openapi.json``) declares
each status, body and media type the server answers with (checked by Schemathesis: tests/test_serve_schema.py).
A search answers ``{"query", "results", "warnings"}``; ``warnings`` holds the query encoder's notes (e.g.
most words unknown to an LSTM).  The page (page.html) shows each result by its media type: a picture as an
image, whatever a browser plays in an HTML media element with the element's controls; a picture found by
words gets a "why?" button that lays /explain's heatmap over it and colours the query's words.

Many clients: concurrent searches are collected for up to ``--batch-wait-ms`` (default 2) and go through
the model and FAISS as one batch (xmcore/search/batching.py; 0: one at a time).  A request body must arrive
whole within ``--body-timeout`` seconds (408), at most ``MAX_CONNECTIONS`` requests are served at once
(more: 503), and an idle connection is closed after 5 s, so that slow or many clients cannot hold the
server (tests/test_serve_load.py; the figures: bench/serve_load.py).

/explain runs the model stored in the index (loaded on the first call, as ``xmcore explain INDEX_DIR``
loads it, and kept: a copy of its own, so searches never wait behind an explanation), one explanation
at a time in the threadpool, and keeps the last few, so that the page's JSON and PNG of one pair cost
one run.  Only items of the gallery are explained, read from the files the index lists.

The server binds 127.0.0.1 unless told otherwise, and checks that the port is free before it says it serves.
"""


import asyncio
import contextlib
import io
import json
import re
import sys
import threading
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, Union

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from typing_extensions import TypeAliasType
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from xmcore.errors import QueryError, XmcoreError, did_you_mean
from xmcore.search.batching import QueryBatcher

MAX_QUERY_CHARS = 1000
MAX_K = 100
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# The event loop (HTTP) and the model's thread share one interpreter lock.  The model gives it up in each
# torch and FAISS call and waits for it back after each; at Python's default switch interval (5 ms) a busy
# loop keeps it that long, and a batch of small tensor operations crawls.  0.1 ms: bench/serve_load.py
# measured 2.68x -> 3.09x (batched / one at a time, 100k HNSW), 3.17x -> 3.50x on the quickstart index.
GIL_SWITCH_S = 1e-4
_VISIBLE = re.compile(r"[!-~]")  # a visible ASCII character: a text query that is surely not only spaces
BATCH_WAIT_MS = 2.0  # concurrent searches collected for up to this long, then embedded and searched as one batch
MAX_BATCH = 64
BODY_TIMEOUT_S = 30.0  # a request body must arrive whole within this long (408)
MAX_CONNECTIONS = 256  # uvicorn's limit_concurrency: beyond it, 503 at once instead of a queue without end
PUBLIC_FIELDS = ("id", "modality", "caption", "label", "split", "belongs_to")  # what a client sees of an item
EXPLAIN_GRID = 64  # /explain's JSON map: at most this many cells a side
EXPLAIN_KEPT = 16  # explanations kept (the page asks for the JSON, then the PNG, of one pair)
PREFERRED_METHODS = ("gradcam", "occlusion")  # /explain's default: the first of these that fits the encoder


class _Refused(Exception):
    """A request body the middleware stopped reading: the status and the one line of the answer."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes with 413 before it is stored anywhere
    (a declared Content-Length at once; a chunked body as soon as it passes the limit), and one that has
    not arrived whole ``timeout`` seconds after its request began with 408: a client that trickles its
    body in holds a connection for that long at most (uvicorn times out idle connections, not slow bodies)."""

    def __init__(self, app, limit: int, timeout: float = BODY_TIMEOUT_S):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, _Refused(413, f"request body larger than {self.limit // (1024 * 1024)} MB"))
        received, started, whole = 0, False, False
        deadline = asyncio.get_running_loop().time() + self.timeout

        async def counted_receive():
            nonlocal received, whole
            if whole:  # after the body: the server's wait for a disconnect, not bounded here
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - asyncio.get_running_loop().time(), 0.001))
            except TimeoutError:
                raise _Refused(408, f"request body not received within {self.timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _Refused(413, f"request body larger than {self.limit // (1024 * 1024)} MB")
                whole = not message.get("more_body", False)
            else:
                whole = True
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _Refused as refused:
            if not started:
                await self._refuse(send, refused)

    async def _refuse(self, send, refused: _Refused):
        body = json.dumps({"detail": refused.detail}).encode()
        await send({"type": "http.response.start", "status": refused.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def upload_accept(index, modality: str) -> str:
    """The ``accept`` of the page's file input for ``modality``: the kinds of media its gallery holds
    (``image/*``...), images for an image modality, else any file."""
    entry = index.manifest["modalities"].get(modality, {})
    kinds = sorted({t.split("/")[0] + "/*" for t in entry.get("media_types", [])})
    return ",".join(kinds) or ("image/*" if modality == "image" else "")


class Detail(BaseModel):
    """Every error's body: one line that says what was expected."""

    detail: str


class Item(BaseModel):
    """What a client sees of a gallery item (``/items/{id}``, each search result)."""

    id: str
    modality: str | None = None
    caption: str | None = None
    label: int | None = None  # a class id, when the dataset has classes
    split: str | None = None
    belongs_to: str | None = None
    file: str | None = None  # the file's name, never a server path
    media_url: str | None = None  # where its file is shown, when it has one the index serves
    media_type: str | None = None


class Result(Item):
    rank: int
    score: float


class AskedQuery(BaseModel):
    """The query as the server understood it."""

    modality: str
    k: int
    target: str


class Answer(BaseModel):
    """A search's answer: the query as understood, the results best first, the query encoder's notes."""

    query: AskedQuery
    results: list[Result]
    warnings: list[str]


class Health(BaseModel):
    status: str
    modalities: dict[str, dict[str, Any]]  # per modality: item count and index type
    model: str | None  # the recipe's name
    query_files: list[str]  # the modalities whose files POST /search takes
    preprocessing: dict[str, str]


def refusals(**why: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses (``s404="..."``), each a :class:`Detail`."""
    return {int(status[1:]): {"model": Detail, "description": text} for status, text in why.items()}


BAD_INPUT = "bad input (the one line says which parameter and what was expected)"


class ExplainedWord(BaseModel):
    word: str
    start: int  # characters of the text, as Python counts them (code points)
    end: int
    attribution: float  # > 0: the word raises the score
    read: bool  # False: the text model read no token of it


# A value of an explanation's details as xmcore.explain.outputs._plain leaves it: lists stay lists (a grid's [8, 8]).
DetailValue = TypeAliasType("DetailValue", Union[bool, int, float, str, None, list["DetailValue"],  # noqa: UP007
                                                 dict[str, "DetailValue"]])


class ExplainedMap(BaseModel):
    shape: list[int]  # [rows, columns] of values: the item's map shrunk to at most EXPLAIN_GRID a side
    values: list[list[float]]  # rows top to bottom, > 0 where the item raises the score
    size: list[int]  # the full map's [rows, columns]: a picture's [height, width] in pixels
    peak: list[float]  # [x, y] of the full map's maximum, in its pixels
    details: dict[str, DetailValue]  # what the method says of itself (the layer Grad-CAM used, its grid...)
    axes: dict[str, Any] | None  # a map over another item than a picture: its canvas's extent and axis labels


class ExplainedMatch(BaseModel):
    item: str
    modality: str
    text: str
    score: float  # the cosine of the item's and the text's embeddings
    method: str
    map: ExplainedMap
    words_by: str | None  # the method that attributed the words (none: the text model cannot say)
    words: list[ExplainedWord]
    notes: list[str]  # e.g. why the words have no attributions


class ExplainRefused(XmcoreError):
    """An /explain request that cannot be answered; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Explained:
    item: str
    text: str
    raw: Any  # the item as the model read it (a picture)
    image: Any  # xmcore.explain.Explanation of the item
    words: Any = None  # ... of the text, or None
    notes: list[str] = field(default_factory=list)


class Explainers:
    """What /explain runs: the model stored in the index (loaded on the first call, as ``xmcore explain
    INDEX_DIR`` loads it, and kept), one explanation at a time, the last :data:`EXPLAIN_KEPT` kept."""

    def __init__(self, index, plugins=None):
        self.index, self._plugins, self._model = index, plugins, None
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple, Explained] = OrderedDict()

    @property
    def plugins(self):
        if self._plugins is None:
            from xmcore.plugins import load_plugins

            self._plugins = load_plugins()
        return self._plugins

    def methods(self, modality: str) -> list[str]:
        return [c.name for c in self.plugins["explainer"] if c.accepts(modality)]

    def explainable(self) -> list[str]:
        """The gallery's modalities an installed explainer maps against a text (a text against a text: none)."""
        if "text" not in self.index.model.encoders:
            return []
        return [m for m in self.index.modalities if m != "text" and m in self.index.model.encoders and self.methods(m)]

    def explain(self, item_id: str, text: str, method: str | None = None) -> Explained:
        """The explanation of gallery item ``item_id`` against ``text`` (checked first, run once, then kept)."""
        meta = self.index.by_id.get(item_id)
        if meta is None:
            raise ExplainRefused(404, f"item: no item '{item_id[:80]}' in this index (an id as /search returns, e.g. image-0)")
        modality = meta.get("modality") or item_id.split("-")[0]
        self.check(item_id, modality)
        candidates = self.candidates(modality, method)
        key = (item_id, text, method)
        with self._lock:
            if key not in self._kept:
                raw = self.read(item_id, meta, modality)
                self._kept[key] = self.run(self.model(), item_id, modality, raw, text, candidates)
                while len(self._kept) > EXPLAIN_KEPT:
                    self._kept.popitem(last=False)
            self._kept.move_to_end(key)
            return self._kept[key]

    def check(self, item_id: str, modality: str) -> None:
        if "text" not in self.index.model.encoders:
            raise ExplainRefused(422, f"this index's model reads no text (it has: {', '.join(self.index.model.encoders)}); "
                                      "/explain explains a match with a text")
        if modality not in self.explainable():
            kinds = ", ".join(self.explainable()) or "none (install an explainer plugin, e.g. xmcore-explain)"
            raise ExplainRefused(422, f"item '{item_id[:80]}' is of the {modality} modality, and no installed explainer "
                                      f"maps {modality} items against a text; the modalities /explain explains here: {kinds}")

    def candidates(self, modality: str, method: str | None) -> list[str]:
        names = self.methods(modality)
        if method is None:
            return [n for n in PREFERRED_METHODS if n in names] or names[:1]
        if method not in names:
            raise ExplainRefused(422, f"method: '{method[:40]}' is not an installed explainer of {modality} items; "
                                      f"{did_you_mean(method, names)}installed: {', '.join(names)}")
        return [method]

    def read(self, item_id: str, meta: dict[str, Any], modality: str) -> Any:
        """The item as its encoder reads it, from the file the index lists (and checks), bounded as a query file is."""
        found = self.index.media_file(meta)
        if found is None:
            raise ExplainRefused(409, f"item '{item_id[:80]}': the index keeps no intact file of it to explain; "
                                      "rebuild the index with `xmcore index`")
        try:
            with open(found[0], "rb") as fh:
                return self.index.read_query(modality, fh)
        except XmcoreError as exc:
            raise ExplainRefused(409, f"item '{item_id[:80]}': its file cannot be read ({self.tidy(exc)})") from None

    def model(self):
        if self._model is None:
            from xmcore.explain import load_model

            try:
                self._model = load_model(self.index.dir, self.plugins)
            except XmcoreError as exc:
                raise ExplainRefused(409, f"no model to explain with: {self.tidy(exc)}") from None
        return self._model

    def run(self, model, item_id: str, modality: str, raw: Any, text: str, candidates: list[str]) -> Explained:
        """The item's map by the first candidate that works on this encoder, then the text's words."""
        from xmcore.explain import explain

        target, notes = model.target("text", text), []
        for name in candidates:
            component = self.plugins["explainer"].get(name)
            try:
                image = explain(component, component.params.model_validate({}), model, modality, raw, target)
                return Explained(item_id, text, raw, image, *self.words(model, modality, raw, text, notes))
            except XmcoreError as exc:
                notes.append(f"{name}: {self.tidy(exc)}")
        raise ExplainRefused(422, f"item '{item_id[:80]}' cannot be explained: {'; '.join(notes)}")

    def words(self, model, modality: str, raw: Any, text: str, notes: list[str]) -> tuple[Any, list[str]]:
        from xmcore.explain import explain

        names = self.methods("text")
        if not names:
            return None, [*notes, "no installed explainer attributes the words of a text"]
        component = self.plugins["explainer"].get("integrated-gradients" if "integrated-gradients" in names else names[0])
        try:
            return explain(component, component.params.model_validate({}), model, "text", text,
                           model.target(modality, raw)), notes
        except XmcoreError as exc:
            return None, [*notes, f"words: {self.tidy(exc)}"]

    def tidy(self, exc: Exception) -> str:
        """A message without the server's paths (the index folder is 'this index')."""
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        for path in {str(self.index.dir.resolve()), str(self.index.dir)}:
            message = message.replace(path, "this index")
        return message

    def record(self, result: Explained) -> dict[str, Any]:
        """The JSON of an explanation (:class:`ExplainedMatch`)."""
        from xmcore.explain import peak
        from xmcore.explain.outputs import _plain, coarse_map

        image, words = result.image, result.words
        grid = coarse_map(image.attributions, EXPLAIN_GRID)
        return {"item": result.item, "modality": image.modality, "text": result.text, "score": round(image.score, 6),
                "method": image.method,
                "map": {"shape": list(grid.shape), "values": [[float(f"{v:.4g}") for v in row] for row in grid.tolist()],
                        "size": list(image.attributions.shape), "peak": list(peak(image.attributions)),
                        "details": _plain(image.details), "axes": axes(image.canvas)},
                "words_by": words.method if words else None,
                "words": [{"word": w.text, "start": w.start, "end": w.end, "attribution": round(w.attribution, 6),
                           "read": w.read} for w in (words.words if words else [])],
                "notes": result.notes}

    def png(self, result: Explained) -> bytes:
        """A picture under its heatmap (:func:`heatmap_png`), another item as its canvas under the map."""
        from xmcore.explain.outputs import canvas_png, heatmap_png

        if result.image.canvas is not None:
            with self._lock:  # pyplot's state is one per process
                return canvas_png(result.raw, result.image)
        if result.image.modality != "image":
            raise ExplainRefused(422, f"format: png draws pictures and maps with a canvas, and '{result.item[:80]}' is a "
                                      f"{result.image.modality} item without one; ask for format=json")
        return heatmap_png(result.raw, result.image)


def axes(canvas) -> dict[str, Any] | None:
    """Where a map with a canvas lies (not a picture's: that one is over its pixels, row 0 at the top)."""
    if canvas is None:
        return None
    return {"extent": [float(v) for v in canvas.extent] if canvas.extent else None, "xlabel": canvas.xlabel,
            "ylabel": canvas.ylabel, "first_row": "bottom"}


def wants_png(accept: str) -> bool:
    """Content negotiation without ``format``: the first of application/json, image/png or image/* that the
    Accept header names decides (a browser's <img> names image/* first); nothing named: JSON."""
    for kind in (part.split(";")[0].strip().lower() for part in accept.split(",")):
        if kind == "application/json":
            return False
        if kind in ("image/png", "image/*"):
            return True
    return False


def allowed_methods(app, scope) -> list[str]:
    """The methods of every route whose path matches the request's."""
    from starlette.routing import Match

    methods = set()
    for route in app.router.routes:
        if route.matches(scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


@dataclass
class Served:
    """What the routes share: the opened index, /explain's models, and how queries reach the model
    (:class:`~xmcore.search.batching.QueryBatcher`: concurrent ones as a batch, or one at a time)."""

    index: Any
    explainers: Explainers
    batcher: QueryBatcher

    def __post_init__(self):
        self._public: dict[str, dict[str, Any]] = {}
        self.modalities, self.file_modalities = self.index.modalities, self.index.file_modalities
        self.expected = {  # what each parameter takes, said when it is wrong
            "text": f"expected 1 to {MAX_QUERY_CHARS} characters", "k": f"expected a whole number from 1 to {MAX_K}",
            "target": f"expected one of {', '.join(self.modalities)}",
            "item": "expected an item id of this index, as /search returns",
            "method": "expected the name of an installed explainer", "format": "expected json or png",
            "file": "expected one query file in a multipart form field named by its modality: "
                    + (", ".join(self.file_modalities) or "(this index takes no query files)")}

    def check_target(self, target: str | None) -> str | None:
        if target is not None and target not in self.modalities:
            raise HTTPException(422, f"target: expected one of {', '.join(self.modalities)}, got '{target[:40]}'")
        return target

    def public(self, meta: dict[str, Any]) -> dict[str, Any]:
        """What a client sees of an item (kept: results repeat, and a media type costs a guess from the name)."""
        item = self._public.get(meta["id"])
        if item is None:
            item = {k: meta[k] for k in PUBLIC_FIELDS if k in meta}
            if "path" in meta:
                item["file"] = Path(meta["path"]).name  # a name, never a server path
            kind = self.index.media_type(meta)
            if kind:
                item["media_url"], item["media_type"] = f"/items/{meta['id']}/media", kind
            self._public[meta["id"]] = item
        return item

    async def answer(self, query_modality: str, query: Any, k: int, target: str | None) -> JSONResponse:
        """A search's answer (``Answer``), through the batcher.  Plain JSON types, so written as they are
        (FastAPI's jsonable_encoder took a millisecond a search)."""
        try:
            results, notes = await self.batcher.answer(query_modality, query, k, target)
        except XmcoreError as exc:
            raise HTTPException(422, str(exc)) from None
        return self.response(query_modality, k, target, results, notes)

    def response(self, query_modality: str, k: int, target: str | None, results: list[dict[str, Any]],
                 notes: list[str]) -> JSONResponse:
        return JSONResponse({
            "query": {"modality": query_modality, "k": k, "target": target or self.index.default_target(query_modality)},
            "results": [self.public(r) | {"rank": r["rank"], "score": r["score"]} for r in results], "warnings": notes})

    def plain_text_search(self, query_string: bytes) -> tuple[str, int, str | None] | None:
        """``(text, k, target)`` of a ``GET /search`` whose parameters are plainly valid, as the route's own
        validation would find them (read as Starlette reads them); ``None`` for anything else (a missing,
        repeated or unknown parameter, a number that is not plain digits, a text without a visible ASCII
        character): the route itself then answers, or says what is wrong."""
        pairs = urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
        params = dict(pairs)
        if len(params) != len(pairs) or "text" not in params or not params.keys() <= {"text", "k", "target"}:
            return None
        text, k, target = params["text"], params.get("k", "10"), params.get("target")
        if not (len(text) <= MAX_QUERY_CHARS and _VISIBLE.search(text) and k.isascii() and k.isdigit() and len(k) <= 6
                and 1 <= int(k) <= MAX_K and (target is None or target in self.modalities)):
            return None
        return text, int(k), target

    def decode(self, modality: str, data: bytes):
        """An upload's bytes as a raw item of ``modality`` (413 beyond a bound, else 422 with the reason)."""
        try:
            return self.index.read_query(modality, io.BytesIO(data))
        except QueryError as exc:
            raise HTTPException(413 if exc.too_large else 422, f"{modality}: {exc}") from None
        except XmcoreError as exc:
            raise HTTPException(422, f"{modality}: {exc}") from None


class TextSearchFastPath:
    """ASGI middleware: a ``GET /search`` whose parameters are plainly valid (:meth:`Served.plain_text_search`)
    goes to the batcher without FastAPI's routing and parameter validation, which cost more of the event
    loop's time than the rest of the request (bench/serve_load.py; the loop's thread and the model's share one
    interpreter lock).  The answer is the route's own (:meth:`Served.response`, byte for byte: tested); any
    other request, and a search the batcher refuses, goes through the app as before, which answers or says
    what is wrong."""

    def __init__(self, app, served: Served):
        self.app, self.served, self.taken = app, served, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/search":
            plain = self.served.plain_text_search(scope["query_string"])
            if plain is not None:
                text, k, target = plain
                try:
                    results, notes = await self.served.batcher.answer("text", text, k, target)
                except Exception:  # noqa: BLE001 -- the route runs it again and answers as it always has
                    return await self.app(scope, receive, send)
                self.taken += 1
                return await self.served.response("text", k, target, results, notes)(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(index, plugins=None, batch_wait_ms: float = BATCH_WAIT_MS, max_batch: int = MAX_BATCH,
               body_timeout_s: float = BODY_TIMEOUT_S):
    """The FastAPI application over an opened :class:`xmcore.search.SearchIndex` (``plugins``: for /explain's
    methods; default: the installed ones, loaded on the first /explain call).  Concurrent searches are
    collected for up to ``batch_wait_ms`` (0: one at a time) into batches of at most ``max_batch``; a
    request body must arrive within ``body_timeout_s``."""
    batcher = QueryBatcher(index, batch_wait_ms, max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="xmcore search", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=MAX_UPLOAD_BYTES + 64 * 1024, timeout=body_timeout_s)  # the file + the form's fields
    served = Served(index, Explainers(index, plugins), batcher)  # /explain: a model of its own, loaded on the first call
    app.add_middleware(TextSearchFastPath, served=served)
    app.state.batcher = batcher
    error_handlers(app, served.expected)
    page_routes(app, served)
    search_routes(app, served)
    upload_route(app, served)
    item_routes(app, served)
    explain_route(app, served.explainers)
    return app


def error_handlers(app, expected: dict[str, str]) -> None:
    """Every error as one line of text (``Detail``), and a 405's ``Allow`` naming every method of the path."""

    @app.exception_handler(RequestValidationError)
    async def one_line(request, exc: RequestValidationError):
        """FastAPI's list of errors (which echoes the input) as the one shape every error has: a line of text."""
        problems = []
        for error in exc.errors():
            name = str(error.get("loc", ("",))[-1])
            kind = error.get("type")
            why = ("required" if kind == "missing" else "empty: only spaces" if kind == "string_pattern_mismatch"
                   else str(error.get("msg", "invalid")))  # the one pattern there is: a character that is not a space
            problems.append(f"{name}: {expected.get(name, 'invalid')} ({why})")
        return JSONResponse({"detail": "; ".join(dict.fromkeys(problems))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        """FastAPI's own answer, but a 405's ``Allow`` lists every method of the path (Starlette names only
        those of the first route that matched it: GET of /search, not its POST)."""
        if exc.status_code == 405:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(app, request.scope))}
        return await http_exception_handler(request, exc)


def page_routes(app, served: Served) -> None:
    """``GET /`` (the search page) and ``GET /health``."""
    index = served.index
    page = files("xmcore.search").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def search_page() -> str:
        uploads = [{"modality": m, "accept": upload_accept(index, m)} for m in served.file_modalities]
        return (page.replace('"{{modalities}}"', json.dumps(served.modalities).replace("<", "\\u003c"))
                .replace('"{{uploads}}"', json.dumps(uploads).replace("<", "\\u003c"))
                .replace('"{{explainable}}"', json.dumps(served.explainers.explainable()).replace("<", "\\u003c")))

    @app.get("/health", response_model=None, responses={200: {"model": Health}})
    def health() -> dict[str, Any]:
        return {"status": "ok", "modalities": index.describe(), "model": index.manifest["model"]["recipe"],
                "query_files": served.file_modalities, "preprocessing": index.preprocessing()}


def search_routes(app, served: Served) -> None:
    """``GET /search?text=...``: a search by words."""

    @app.get("/search", response_model=None, responses={200: {"model": Answer}, **refusals(s422=BAD_INPUT)})
    async def search_text(
        text: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S",
                          description="the words to search for (not only spaces)"),
        k: int = Query(10, ge=1, le=MAX_K, description="how many results"),
        target: str = Query(None, max_length=40, json_schema_extra={"enum": served.modalities},
                            description="the modality to search (default: another than the query's)"),
    ) -> JSONResponse:
        if not text.strip():
            raise HTTPException(422, "text: the query is empty")
        return await served.answer("text", text, k, served.check_target(target))


def upload_route(app, served: Served) -> None:
    """``POST /search``: a search by an example file, in a form field named by its modality."""
    file_modalities, modalities = served.file_modalities, served.modalities
    form_schema = {"type": "object", "properties": {
        **{m: {"type": "string", "format": "binary", "minLength": 1, "description": f"a {m} file (give one file)"}
           for m in file_modalities},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K}, "target": {"type": "string", "enum": modalities}},
        **({"required": file_modalities} if len(file_modalities) == 1 else
           {"oneOf": [{"required": [m]} for m in file_modalities]})}

    @app.post("/search", response_model=None, include_in_schema=bool(file_modalities), responses={
        200: {"model": Answer},
        **refusals(s413=f"the file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB, or beyond its modality's "
                        "bound (an image's pixels, a clip's duration)",
                   s422=BAD_INPUT + "; or the file is not readable as its modality, or k or target is given in the "
                                    "form and the query string with different values")},
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form_schema}}}})
    async def search_file(
        request: Request,
        k_in_query: int = Query(None, alias="k", ge=1, le=MAX_K, description="or in the form"),
        target_in_query: str = Query(None, alias="target", max_length=40, json_schema_extra={"enum": modalities},
                                     description="or in the form"),
    ) -> JSONResponse:
        """A query file in a form field named by its modality (``image=``...); k and target in the form or the query string."""
        fields, modality, data = await read_form(request, file_modalities, served.expected["file"])
        k = either("k", form_k(fields.get("k"), served.expected["k"]), k_in_query, 10)
        target = either("target", form_target(fields.get("target"), served.expected["target"]), target_in_query, None)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"{modality}: larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        if not data:
            raise HTTPException(422, f"{modality}: the upload is empty")
        query = await run_in_threadpool(served.decode, modality, data)
        return await served.answer(modality, query, k, served.check_target(target))


async def read_form(request, file_modalities: list[str], expected: str) -> tuple[dict[str, str], str, bytes]:
    """The form's text fields, and its one file's modality and bytes (at most one byte over the limit)."""
    try:
        async with request.form(max_files=4, max_fields=16) as form:
            items = form.multi_items()
            files = [(name, value) for name, value in items if isinstance(value, UploadFile)]
            if len(files) != 1 or files[0][0] not in file_modalities:
                raise HTTPException(422, expected)
            fields = {name: value for name, value in items if isinstance(value, str)}
            return fields, files[0][0], await files[0][1].read(MAX_UPLOAD_BYTES + 1)
    except (_Refused, HTTPException):
        raise
    except Exception:  # noqa: BLE001 -- a malformed multipart body, whatever the parser says of it
        raise HTTPException(422, f"not a readable multipart form; {expected}") from None


def form_k(value: str | None, expected: str) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit() or not 1 <= int(value) <= MAX_K:
        raise HTTPException(422, f"k: {expected}")
    return int(value)


def form_target(value: str | None, expected: str) -> str | None:
    if value is not None and len(value) > 40:
        raise HTTPException(422, f"target: {expected}")
    return value


def either(name: str, in_form, in_query, default):
    if in_form is not None and in_query is not None and in_form != in_query:
        raise HTTPException(422, f"{name}: given twice with different values (form and query string); give it once")
    return in_form if in_form is not None else in_query if in_query is not None else default


def item_routes(app, served: Served) -> None:
    """``GET /items/{id}`` (an item's metadata) and ``GET /items/{id}/media`` (its file, if the index lists one)."""
    index = served.index
    types = sorted({t for e in index.manifest["modalities"].values() for t in e.get("media_types", [])})
    binary = {"schema": {"type": "string", "format": "binary"}}

    @app.get("/items/{item_id}", response_model=None, responses={
        200: {"model": Item}, **refusals(s404="no such item in this index", s422=BAD_INPUT)})
    def item(item_id: str) -> dict[str, Any]:
        meta = index.by_id.get(item_id)
        if meta is None:
            raise HTTPException(404, f"no item '{item_id[:80]}' in this index")
        return served.public(meta)

    @app.get("/items/{item_id}/media", response_class=Response, responses={
        200: {"description": "the item's file, as its media type", "content": {
            t: binary for t in types or ["*/*"]}},  # an index that lists no media types: any servable type
        **refusals(s404="no such item, or no intact file of it that the index serves", s422=BAD_INPUT)})
    def media(item_id: str):
        meta = index.by_id.get(item_id)
        found = index.media_file(meta) if meta else None
        if found is None:
            raise HTTPException(404, f"no file to show for item '{item_id[:80]}' in this index")
        path, kind = found
        return FileResponse(path, media_type=kind, headers={"X-Content-Type-Options": "nosniff"})


def explain_route(app, explainers: Explainers) -> None:
    """``GET /explain`` on ``app``: the route, its parameters and the responses the OpenAPI schema declares."""
    refusals = {404: "no such item in this index", 409: "the index's stored model or the item's file is missing or damaged",
                422: "bad input: an empty or missing text, an unknown method, an item of a modality no installed explainer "
                     "maps (a text), format=png for a map that is neither over a picture nor on a canvas"}

    @app.get("/explain", response_model=ExplainedMatch, responses={
        200: {"description": "JSON (the default; `Accept: application/json`), or with `format=png` (or an Accept header "
                             "that names image/png or image/* before application/json) the picture under its heatmap, "
                             "enlarged by a whole factor to at least 256 pixels on its shorter side (at most 1024 on its "
                             "longer; a longer picture shrunk to 1024), its proportions kept, method and score along "
                             "its foot; a map over another item (a sound) as a figure of what the model read under the map",
              "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **{status: {"model": Detail, "description": why} for status, why in refusals.items()}})
    def explain_match(
        request: Request,
        item: str = Query(..., min_length=1, max_length=200, description="a gallery item's id, as /search returns it"),
        text: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S",
                          description="the words the item is explained against (not only spaces)"),
        method: str | None = Query(None, max_length=40, description="an installed explainer of the item's modality; "
                                   "default: gradcam where the encoder has a convolutional stage, else occlusion"),
        format: Literal["json", "png"] | None = Query(None, description="json or png; default: by the Accept header, else json"),
    ):
        """Why gallery item ``item`` matches ``text``: where in the item, and which of the text's words."""
        if not text.strip():
            raise HTTPException(422, "text: the text is empty; give the words to explain the match with")
        png = format == "png" if format else wants_png(request.headers.get("accept", ""))
        try:
            result = explainers.explain(item, text, method)
            if png:
                return Response(explainers.png(result), media_type="image/png", headers={"Cache-Control": "no-store"})
        except ExplainRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        return explainers.record(result)


class AddressError(XmcoreError):
    """The address to serve at cannot be used (the port is taken, the host is not this machine's)."""


def bind(host: str, port: int):
    """A TCP socket bound to ``host:port``, or an :class:`AddressError` saying why not."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressError(f"--host {host}: not an address this machine can serve at ({exc}); e.g. 127.0.0.1 or 0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait out TIME_WAIT
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressError(f"--port {port}: {host}:{port} is already in use (another server?); choose another --port") from None
        if exc.errno == errno.EACCES:
            raise AddressError(f"--port {port}: not allowed to listen on {host}:{port} (ports below 1024 need privileges); "
                               "choose a port from 1024 up") from None
        raise AddressError(f"--host {host}: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def serve(index_dir: Path, plugins, host: str = "127.0.0.1", port: int = 8000, batch_wait_ms: float = BATCH_WAIT_MS,
          max_batch: int = MAX_BATCH, body_timeout_s: float = BODY_TIMEOUT_S) -> None:
    """Serve until interrupted.  Bounded: at most :data:`MAX_CONNECTIONS` requests at once (more get 503 at
    once), an idle connection closed after 5 s, a request body read for ``body_timeout_s`` at most."""
    import uvicorn

    from xmcore.search.query import SearchIndex

    sys.setswitchinterval(GIL_SWITCH_S)  # this process only serves: see GIL_SWITCH_S
    sock = bind(host, port)  # before anything else: a taken port is said at once, and nothing claims to serve
    try:
        index = SearchIndex(index_dir, plugins)
        app = create_app(index, plugins, batch_wait_ms, max_batch, body_timeout_s)
        print(f"serving {index_dir} at http://{host}:{port}/  (Ctrl-C stops)", flush=True)
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", limit_concurrency=MAX_CONNECTIONS,
                                      timeout_keep_alive=5, access_log=False, proxy_headers=False)).run(sockets=[sock])
    finally:
        sock.close()
