"""`msw corpus --workers 2`: the stream and its strategy render in a child process while this one
tokenizes and writes, so the two halves of the corpus stage run on two cores at once.

The stream is one seeded sequence (each document's draws follow the last one's) and so is a
strategy's generator; the child runs exactly that code, so the rows, and the shards written from
them, are byte for byte those of one process (a test holds them so). More workers than two would
have nothing to do: rendering cannot be split between processes without giving each document its
own seed, which would change every corpus rendered so far.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from queue import Full

from medsafetyworld.corpus.writer import CorpusRow

log = logging.getLogger("medsafetyworld")
SEND_BATCH = 256  # rows per message
AHEAD = 8  # messages the child may render ahead of the writer


def rows_from_child(make_rows: Callable[[], Iterator[CorpusRow]]) -> Iterator[CorpusRow]:
    """The rows `make_rows()` yields, made in a forked child process. Closing the iterator (the
    writer has its budget) ends the child. Where fork is not available (macOS, Windows: the child
    would have to rebuild the world, the tokenizer and third-party strategies from pickles) the
    rows are made here."""
    if "fork" not in mp.get_all_start_methods():
        log.warning("corpus: --workers needs the fork start method, which this platform lacks; rendering "
                    "in one process")
        yield from make_rows()
        return
    ctx = mp.get_context("fork")
    # a queue of a few batches: the child keeps rendering while the writer is busy with the last one
    queue = ctx.Queue(maxsize=AHEAD)
    child = ctx.Process(target=_render, args=(queue, make_rows), daemon=True, name="msw-corpus-render")
    child.start()
    try:
        while True:
            kind, payload = queue.get()
            if kind == "error":
                raise payload
            if kind == "end":
                return
            yield from map(CorpusRow._make, payload)
    finally:
        child.terminate()
        child.join()
        queue.close()
        queue.cancel_join_thread()


def _render(queue: Queue, make_rows: Callable[[], Iterator[CorpusRow]]) -> None:
    """The child: rows in batches of plain tuples (cheaper to pickle), then "end", or the error."""
    parent = os.getppid()

    def put(message: tuple) -> None:
        while True:  # a parent killed outright reads nothing again: do not wait for it forever
            try:
                return queue.put(message, timeout=1.0)
            except Full:
                if os.getppid() != parent:
                    raise SystemExit(1) from None

    try:
        batch: list[tuple] = []
        for row in make_rows():
            batch.append(tuple(row))
            if len(batch) == SEND_BATCH:
                put(("rows", batch))
                batch = []
        put(("rows", batch))
        put(("end", None))
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - everything goes to the parent, which raises it
        try:
            pickle.dumps(exc)
        except Exception:  # an exception that does not pickle
            exc = RuntimeError(f"corpus render process: {type(exc).__name__}: {exc}")
        put(("error", exc))
    finally:
        queue.close()
        queue.join_thread()
