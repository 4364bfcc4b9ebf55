"""`xmcore serve` with many clients: concurrent searches batched with the results of one at a time, and slow or
many clients that do not stop the others (a real server, a bounded number of connections).

The load figures (32 clients, 60 s, batched against one at a time) are bench/serve_load.py's."""

import asyncio
import json
import select
import socket
import threading
import time
import urllib.parse
import urllib.request

import pytest

from test_serve import _serve, lines


@pytest.fixture(scope="module")
def index(gallery_index, plugins):
    from xmcore.search import SearchIndex

    return SearchIndex(gallery_index, plugins)


def queries(gallery_index):
    captions = [c["caption"] for c in lines(gallery_index / "metadata" / "text.jsonl")]
    # different lengths (the text encoder pads a batch), both targets, two values of k
    return [(text, target, k) for text, target, k in zip(
        captions + ["a red", "circle", "a small blue triangle to the left of a big green square"],
        ["image", "text"] * 20, [5, 5, 3] * 20)]


def test_concurrent_searches_are_batched_and_get_the_results_of_one_at_a_time(index, gallery_index):
    from xmcore.search.batching import QueryBatcher

    asked = queries(gallery_index)
    batcher = QueryBatcher(index, wait_ms=20, max_batch=64)

    async def all_at_once():
        return await asyncio.gather(*(batcher.answer("text", text, k, target) for text, target, k in asked))

    try:
        batched = asyncio.run(all_at_once())
    finally:
        batcher.close()
    assert batcher.queries == len(asked) and batcher.batches <= 4  # (image, 5), (text, 5), (image, 3), (text, 3)
    for (text, target, k), (results, notes) in zip(asked, batched, strict=True):
        alone = index.search("text", text, k, target)
        assert [r["id"] for r in results] == [r["id"] for r in alone]
        assert [r["score"] for r in results] == pytest.approx([r["score"] for r in alone], abs=1e-5)
        assert notes == index.query_warnings("text", text)


def test_a_query_that_fails_in_a_batch_fails_alone(index, gallery_index, monkeypatch):
    from xmcore.errors import XmcoreError
    from xmcore.search.batching import QueryBatcher

    embed_queries = type(index).embed_queries

    def refusing(self, modality, queries):  # as an encoder refuses an item it cannot read
        if "refused" in queries:
            raise XmcoreError("this query is refused")
        return embed_queries(self, modality, queries)

    monkeypatch.setattr(type(index), "embed_queries", refusing)
    batcher = QueryBatcher(index, wait_ms=20)

    async def together():
        return await asyncio.gather(*(batcher.answer("text", q, 3, "image") for q in ("a red circle", "refused", "a blue square")),
                                    return_exceptions=True)

    try:
        good, refused, other = asyncio.run(together())
    finally:
        batcher.close()
    assert isinstance(refused, XmcoreError) and len(good[0]) == len(other[0]) == 3


@pytest.mark.parametrize("wait_ms", [50, 0])
def test_the_server_batches_concurrent_requests_unless_told_not_to(index, gallery_index, wait_ms):
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from xmcore.search.server import create_app

    asked = queries(gallery_index)[:24]
    with TestClient(create_app(index, batch_wait_ms=wait_ms)) as client, ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda q: client.get("/search", params={"text": q[0], "target": q[1], "k": q[2]}), asked))
        batcher = client.app.state.batcher
    assert all(a.status_code == 200 for a in answers)
    assert batcher.queries == len(asked) and (batcher.batches < len(asked) if wait_ms else batcher.batches == len(asked))
    for (text, target, k), answer in zip(asked, answers, strict=True):
        assert [r["id"] for r in answer.json()["results"]] == [r["id"] for r in index.search("text", text, k, target)]


def test_batches_are_embedded_while_the_one_before_is_searched(index, monkeypatch):
    """The model's thread embeds the next batch while the index's thread searches the last: with a search
    that takes 0.3 s, the second batch's embedding starts before the first batch's search ends."""
    from xmcore.search.batching import QueryBatcher

    events, embed_queries, search_vectors = [], type(index).embed_queries, type(index).search_vectors

    def embedding(self, modality, queries):
        events.append(("embed", queries[0], time.perf_counter()))
        return embed_queries(self, modality, queries)

    def searching(self, target, vectors, k):
        time.sleep(0.3)
        events.append(("searched", len(vectors), time.perf_counter()))
        return search_vectors(self, target, vectors, k)

    monkeypatch.setattr(type(index), "embed_queries", embedding)
    monkeypatch.setattr(type(index), "search_vectors", searching)
    batcher = QueryBatcher(index, wait_ms=5)

    async def two_waves():
        first = [asyncio.ensure_future(batcher.answer("text", q, 3, "image")) for q in ("a red circle", "a red square")]
        await asyncio.sleep(0.1)  # the first batch is in the index's thread by now
        second = [asyncio.ensure_future(batcher.answer("text", q, 3, "image")) for q in ("a blue circle",)]
        return await asyncio.gather(*first, *second)

    try:
        answers = asyncio.run(two_waves())
    finally:
        batcher.close()
    assert [len(results) for results, _ in answers] == [3, 3, 3] and batcher.batches == 2
    (_, _, first_embedded), (_, _, second_embedded) = [e for e in events if e[0] == "embed"]
    first_searched = next(t for kind, n, t in events if kind == "searched" and n == 2)
    assert second_embedded < first_searched, events


def test_plain_text_searches_skip_fastapi_and_get_the_routes_own_answer(gallery_index, plugins):
    """GET /search with plainly valid parameters is answered by the fast path; the same search with one more
    parameter (unknown, so the route answers it) gets the same bytes and headers.  Anything else goes to the
    route: its errors are the route's."""
    from fastapi.testclient import TestClient

    from xmcore.search import SearchIndex
    from xmcore.search.server import TextSearchFastPath, create_app

    app = create_app(SearchIndex(gallery_index, plugins), batch_wait_ms=1)
    with TestClient(app) as client:
        stack, fast = app.middleware_stack, None
        while fast is None and stack is not None:
            fast = stack if isinstance(stack, TextSearchFastPath) else None
            stack = getattr(stack, "app", None)
        assert fast is not None
        for params in ({"text": "a red circle"}, {"text": "a blue square", "k": "3"},
                       {"text": "the green triangle", "k": "7", "target": "text"}, {"text": "zorblax quux", "k": "2"}):
            taken = fast.taken
            quick = client.get("/search", params=params)
            assert fast.taken == taken + 1
            routed = client.get("/search", params={**params, "via": "route"})
            assert fast.taken == taken + 1
            assert quick.status_code == routed.status_code == 200
            assert quick.content == routed.content
            assert {k: v for k, v in quick.headers.items()} == {k: v for k, v in routed.headers.items()}
        taken = fast.taken
        for params, status, detail in [
            ({"text": "   "}, 422, "text: expected 1 to 1000 characters (empty: only spaces)"),
            ({"text": "a red circle", "k": "0"}, 422, "k: expected a whole number from 1 to 100"),
            ({"text": "a red circle", "k": "+3"}, 200, None),
            ({"text": "a red circle", "target": "sound"}, 422, "target: expected one of image, text, got 'sound'"),
            ({"k": "3"}, 422, "text: expected 1 to 1000 characters (required)"),
            ({"text": "x" * 1001}, 422, "text: expected 1 to 1000 characters"),
        ]:
            answer = client.get("/search", params=params)
            assert answer.status_code == status, (params, answer.text)
            assert detail is None or answer.json()["detail"].startswith(detail), (params, answer.text)
        assert fast.taken == taken  # none of these was plain: the route answered each


@pytest.mark.parametrize("option,value,message", [
    ("--batch-wait-ms", "-1", "--batch-wait-ms: expected 0 (no batching) to 1000 milliseconds"),
    ("--max-batch", "0", "--max-batch: expected 1 or more"),
    ("--body-timeout", "0", "--body-timeout: expected a number of seconds above 0"),
])
def test_bad_serve_options_get_one_line(gallery_index, capfd, option, value, message):
    from xmcore.cli import main

    assert main(["serve", str(gallery_index), option, value]) == 2
    assert capfd.readouterr().err.strip() == f"error: {message}"


class SlowUpload(threading.Thread):
    """A POST /search whose body of ``size`` bytes trickles in, a byte every 0.2 s, until the server answers
    (kept in ``answer``) or ``stop``."""

    def __init__(self, url: str, size: int, stop: threading.Event):
        super().__init__(daemon=True)
        host, port = url.removeprefix("http://").split(":")
        self.sock, self.stop, self.answer = socket.create_connection((host, int(port))), stop, b""
        self.sock.sendall(f"POST /search HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                          f"Content-Length: {size}\r\n\r\n--b\r\n".encode())
        self.start()

    def run(self):
        try:
            while not self.stop.is_set():
                if select.select([self.sock], [], [], 0.2)[0]:  # the server answers: read until it closes
                    while chunk := self.sock.recv(4096):
                        self.answer += chunk
                    return
                self.sock.sendall(b"x")
        except OSError:  # reset by the server as it closes: what was read is kept
            pass


def timed_search(url: str, text: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"{url}/search?{urllib.parse.urlencode({'text': text, 'k': 3})}", timeout=30) as r:
        assert r.status == 200 and len(json.load(r)["results"]) == 3
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def server(gallery_index):
    yield from _serve(gallery_index, "--body-timeout", "4")


def post_picture(url: str, picture: bytes) -> int:
    boundary = "xmcoreboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + picture + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "/search?k=3", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.status


def test_slow_uploads_many_uploads_and_a_flood_of_health_do_not_stop_a_search(server, gallery_index):
    """32 uploads that trickle in, 8 connections uploading pictures and 8 asking /health without pause, while
    another client searches: each search answers within 2 s; the slow uploads get 408 when their time is up."""
    stop, failures, done = threading.Event(), [], []
    uploads = [SlowUpload(server, 200_000, stop) for _ in range(32)]
    picture = (gallery_index / "media" / "image-1.png").read_bytes()

    def keep_asking(ask):
        while not stop.is_set():
            try:
                done.append(ask())
            except Exception as exc:  # noqa: BLE001 -- counted, and the test fails on it
                failures.append(repr(exc))

    floods = [threading.Thread(target=keep_asking, args=(ask,), daemon=True)
              for ask in [lambda: urllib.request.urlopen(server + "/health", timeout=30).status] * 8
              + [lambda: post_picture(server, picture)] * 8]
    try:
        for thread in floods:
            thread.start()
        time.sleep(1)
        waits = [timed_search(server, text) for text in ("a red circle", "a blue square", "a green triangle") * 2]
        assert max(waits) < 2, waits
        deadline = time.monotonic() + 20
        for upload in uploads:  # the body timeout (4 s here) ends each slow upload with a 408 and closes it
            upload.join(timeout=max(deadline - time.monotonic(), 0))
            answer = upload.answer.decode(errors="replace")
            assert answer.startswith("HTTP/1.1 408") and "request body not received within 4 s" in answer, answer
    finally:
        stop.set()
        for thread in floods:
            thread.join(timeout=30)
        for upload in uploads:
            upload.sock.close()
    assert failures == [] and len(done) > 16 and set(done) == {200}
    assert timed_search(server, "a red circle") < 2
