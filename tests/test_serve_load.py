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

    search_many = type(index).search_many

    def refusing(self, modality, queries, k=10, target=None):  # search() calls it too, with one query
        if "refused" in queries:
            raise XmcoreError("this query is refused")
        return search_many(self, modality, queries, k, target)

    monkeypatch.setattr(type(index), "search_many", refusing)
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
