"""Concurrent queries through the model as batches (``xmcore serve --batch-wait-ms``).

The server's event loop collects the searches that arrive within ``wait_ms`` of the first (or until
``max_batch``); one worker thread, which alone runs the model, embeds the queries of one modality as one
batch and searches FAISS with the whole matrix; the loop hands each caller its own results.  Searches
that arrive while a batch runs form the next one.  Queries are grouped by (modality, target, k): a batch
searches with one k, so an approximate index (HNSW's candidate list grows with k) answers each query as it
would alone.  An encoder embeds an item of a batch as it embeds it alone (they mask their padding) up to
float rounding, so the results are those of one query at a time (tests/test_serve_load.py).

``wait_ms=0`` turns batching off: one query at a time behind a lock, in a thread of the server's
threadpool, as before batching.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass
class Pending:
    modality: str
    query: Any
    k: int
    target: str
    future: asyncio.Future


Answer = tuple[list[dict[str, Any]], list[str]]  # the results and the query encoder's notes


class QueryBatcher:
    """Searches of an opened :class:`xmcore.search.SearchIndex`, each answered as ``(results, warnings)``."""

    def __init__(self, index, wait_ms: float = 2.0, max_batch: int = 64):
        self.index, self.wait, self.max_batch = index, max(wait_ms, 0) / 1000, max(max_batch, 1)
        self.batching = self.wait > 0 and self.max_batch > 1
        self._lock = threading.Lock()  # not batching: one query at a time
        self._model: ThreadPoolExecutor | None = None  # batching: the one thread that runs the model (when needed)
        self._pending: list[Pending] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running = False
        self.batches = self.queries = 0  # how many went through the model: fewer batches than queries when batched

    def search(self, modality: str, query: Any, k: int, target: str | None) -> Answer:
        """One query now, in the caller's thread, one at a time."""
        with self._lock:
            self.batches, self.queries = self.batches + 1, self.queries + 1
            return self.index.search(modality, query, k, target), self.index.query_warnings(modality, query)

    async def answer(self, modality: str, query: Any, k: int, target: str | None) -> Answer:
        """The answer to one query, batched with those that arrive with it (not batching: :meth:`search` in a thread)."""
        loop = asyncio.get_running_loop()
        if not self.batching:
            return await loop.run_in_executor(None, self.search, modality, query, k, target)
        pending = Pending(modality, query, k, target or self.index.default_target(modality), loop.create_future())
        self._pending.append(pending)
        if len(self._pending) >= self.max_batch:
            self._flush(loop)
        elif self._timer is None and not self._running:
            self._timer = loop.call_later(self.wait, self._flush, loop)
        return await pending.future

    def close(self) -> None:
        """Stop the model's thread (the app's shutdown; a later search starts another: a test client's
        lifespan may end and begin again around one app)."""
        model, self._model = self._model, None
        if model is not None:
            model.shutdown(wait=True)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running or not self._pending:
            return  # the running batch flushes what waits when it ends
        batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        self._running = True
        if self._model is None:
            self._model = ThreadPoolExecutor(1, thread_name_prefix="xmcore-model")
        loop.run_in_executor(self._model, self._answer_all, batch).add_done_callback(
            lambda done: self._deliver(loop, batch, done))  # an asyncio future: called in the loop

    def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list[Pending], done) -> None:
        self._running = False
        outcomes = done.result() if done.exception() is None else [done.exception()] * len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():  # its caller went away
                continue
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        if self._pending:  # they waited while this batch ran: at once
            self._flush(loop)

    def _answer_all(self, batch: list[Pending]) -> list[Answer | Exception]:
        """In the model's thread: each group of the batch as one search."""
        outcomes: list[Answer | Exception] = [None] * len(batch)  # type: ignore[list-item]
        groups: dict[tuple[str, str, int], list[int]] = defaultdict(list)
        for i, pending in enumerate(batch):
            groups[(pending.modality, pending.target, pending.k)].append(i)
        for (modality, target, k), members in groups.items():
            try:
                found = self.index.search_many(modality, [batch[i].query for i in members], k, target)
            except Exception:  # noqa: BLE001 -- one query that fails must not fail the others: each alone, its own error
                found = None
            self.batches, self.queries = self.batches + 1, self.queries + len(members)
            for j, i in enumerate(members):
                try:
                    results = found[j] if found is not None else self.index.search(modality, batch[i].query, k, target)
                    outcomes[i] = (results, self.index.query_warnings(modality, batch[i].query))
                except Exception as exc:  # noqa: BLE001 -- handed to its caller as it is
                    outcomes[i] = exc
        return outcomes
