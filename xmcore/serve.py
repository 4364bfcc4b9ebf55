"""``xmcore serve``: an HTTP API and one web page over an index folder (FastAPI + uvicorn).

    GET  /                      the search page (a search box, an image upload, a results grid)
    GET  /health                status, item counts, index types
    GET  /search?text=...&k=10[&target=image|text]
    POST /search                multipart form: image=<file>, k, target
    GET  /items/{id}            an item's metadata
    GET  /items/{id}/media      an item's image: only files that the index lists, looked up by id

Bounded input: a query of at most ``MAX_QUERY_CHARS`` characters, k of 1 to ``MAX_K``, uploads of
at most ``MAX_UPLOAD_BYTES``; anything else is a 4xx with a message saying what was expected.  The
server binds 127.0.0.1 unless told otherwise.
"""


import io
import json
import threading
from pathlib import Path
from typing import Any

from xmcore.errors import XmcoreError

MAX_QUERY_CHARS = 1000
MAX_K = 100
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp"}
PUBLIC_FIELDS = ("id", "modality", "caption", "label", "split", "belongs_to")  # what a client sees of an item


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes with 413 before it is stored anywhere
    (a declared Content-Length at once; a chunked body as soon as it passes the limit)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps({"detail": f"request body larger than {self.limit // (1024 * 1024)} MB"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(index):
    """The FastAPI application over an opened :class:`xmcore.index.SearchIndex`."""
    from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse
    from PIL import Image
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="xmcore search", version="1", docs_url="/docs", redoc_url=None)
    app.add_middleware(BodyLimit, limit=MAX_UPLOAD_BYTES + 64 * 1024)  # the image plus the form's other fields
    lock = threading.Lock()  # one query through the model at a time
    modalities = index.modalities

    def check_target(target: str | None) -> str | None:
        if target is not None and target not in modalities:
            raise HTTPException(422, f"target: expected one of {', '.join(modalities)}, got '{target[:40]}'")
        return target

    def present(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [public(r) | {"rank": r["rank"], "score": r["score"]} for r in results]

    def public(meta: dict[str, Any]) -> dict[str, Any]:
        item = {k: meta[k] for k in PUBLIC_FIELDS if k in meta}
        if "path" in meta:
            item["file"] = Path(meta["path"]).name  # a name, never a server path
        if "media" in meta or "path" in meta:
            item["media_url"] = f"/items/{meta['id']}/media"
        return item

    def run(query_modality: str, query: Any, k: int, target: str | None) -> dict[str, Any]:
        try:
            with lock:
                results = index.search(query_modality, query, k, target)
        except XmcoreError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"query": {"modality": query_modality, "k": k, "target": target or index.default_target(query_modality)},
                "results": present(results)}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.replace('"{{modalities}}"', json.dumps(modalities).replace("<", "\\u003c"))

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "modalities": index.describe(), "model": index.manifest["model"]["recipe"]}

    @app.get("/search")
    def search_text(
        text: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, description="the words to search for"),
        k: int = Query(10, ge=1, le=MAX_K),
        target: str | None = Query(None, max_length=40),
    ) -> dict[str, Any]:
        if not text.strip():
            raise HTTPException(422, "text: the query is empty")
        return run("text", text, k, check_target(target))

    @app.post("/search")
    async def search_image(
        image: UploadFile = File(..., description="an image file (PNG, JPEG, ...)"),
        k: int = Form(10, ge=1, le=MAX_K),
        target: str | None = Form(None, max_length=40),
    ) -> dict[str, Any]:
        data = await image.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"image: larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        if not data:
            raise HTTPException(422, "image: the upload is empty")
        picture = await run_in_threadpool(decode, data)
        return await run_in_threadpool(run, "image", picture, k, check_target(target))

    def decode(data: bytes):
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > 50_000_000:
                    raise HTTPException(413, "image: more than 50 megapixels")
                return im.convert("RGB")
        except HTTPException:
            raise
        except Exception:  # noqa: BLE001 -- PIL raises many types for bad input; none may take the server down
            raise HTTPException(422, "image: not a readable image (expected PNG, JPEG, WebP, GIF or BMP)") from None

    @app.get("/items/{item_id}")
    def item(item_id: str) -> dict[str, Any]:
        meta = index.by_id.get(item_id)
        if meta is None:
            raise HTTPException(404, f"no item '{item_id[:80]}' in this index")
        return public(meta)

    @app.get("/items/{item_id}/media")
    def media(item_id: str):
        meta = index.by_id.get(item_id)
        path = index.media_file(meta) if meta else None
        if path is None:
            raise HTTPException(404, f"no image for item '{item_id[:80]}' in this index")
        return FileResponse(path, media_type=IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    return app


def serve(index_dir: Path, plugins, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    from xmcore.index import SearchIndex

    index = SearchIndex(index_dir, plugins)
    app = create_app(index)
    print(f"serving {index_dir} at http://{host}:{port}/  (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>xmcore search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 14px 24px; }
  header h1 { margin: 0; font-size: 20px; }
  form { display: flex; gap: 10px; flex-wrap: wrap; align-items: center; padding: 16px 24px; background: #fff;
         border-bottom: 1px solid #dde1e7; }
  input[type=text] { flex: 1 1 320px; font-size: 16px; padding: 8px 10px; border: 1px solid #b9c0cc; border-radius: 6px; }
  button { font-size: 15px; padding: 8px 14px; border: 0; border-radius: 6px; background: #2d6cdf; color: #fff; cursor: pointer; }
  label { font-size: 14px; }
  #status { padding: 8px 24px; color: #566; min-height: 20px; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 14px; padding: 8px 24px 24px; }
  .card { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 8px; }
  .card img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #eef0f3; border-radius: 4px;
              image-rendering: pixelated; }
  .score { font-weight: 600; font-size: 13px; }
  .caption { font-size: 13px; margin-top: 4px; }
  .id { color: #778; font-size: 12px; }
</style>
</head>
<body>
<header><h1>xmcore search</h1></header>
<form id="text-form">
  <input type="text" id="query" name="text" maxlength="1000" placeholder="describe what you are looking for" autofocus>
  <label>in <select id="target"></select></label>
  <label>k <input type="number" id="k" value="12" min="1" max="100" style="width:4em"></label>
  <button type="submit" id="search-button">Search</button>
  <label>or by example: <input type="file" id="image" accept="image/*"></label>
</form>
<div id="status"></div>
<div id="results"></div>
<script>
const modalities = "{{modalities}}";
const target = document.getElementById("target");
for (const m of modalities) {
  const o = document.createElement("option"); o.value = m; o.textContent = m === "image" ? "images" : m === "text" ? "captions" : m;
  target.appendChild(o);
}
const status = document.getElementById("status"), results = document.getElementById("results");
function show(data) {
  results.replaceChildren();
  for (const r of data.results) {
    const card = document.createElement("div"); card.className = "card"; card.dataset.id = r.id;
    if (r.media_url) { const img = document.createElement("img"); img.src = r.media_url; img.alt = r.id; card.appendChild(img); }
    const score = document.createElement("div"); score.className = "score"; score.textContent = "#" + r.rank + "  " + r.score.toFixed(3);
    card.appendChild(score);
    if (r.caption) { const c = document.createElement("div"); c.className = "caption"; c.textContent = r.caption; card.appendChild(c); }
    const id = document.createElement("div"); id.className = "id"; id.textContent = r.id + (r.label !== undefined ? "  label " + r.label : "");
    card.appendChild(id);
    results.appendChild(card);
  }
  status.textContent = data.results.length + " results in " + data.query.target;
}
async function answer(response) {
  const data = await response.json();
  if (!response.ok) { status.textContent = "error: " + (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)); return; }
  show(data);
}
document.getElementById("text-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const q = document.getElementById("query").value;
  if (!q.trim()) { status.textContent = "type something to search for"; return; }
  status.textContent = "searching...";
  const params = new URLSearchParams({text: q, k: document.getElementById("k").value, target: target.value});
  await answer(await fetch("/search?" + params));
});
document.getElementById("image").addEventListener("change", async (e) => {
  const file = e.target.files[0]; if (!file) return;
  status.textContent = "searching...";
  const body = new FormData(); body.append("image", file); body.append("k", document.getElementById("k").value);
  body.append("target", target.value);
  await answer(await fetch("/search", {method: "POST", body}));
});
target.value = modalities.includes("image") ? "image" : modalities[0];
</script>
</body>
</html>
"""
