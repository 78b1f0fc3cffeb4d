"""Blocking calls (the desk, psycopg) off the event loop: one thread pool per process.

``in_thread`` does what Starlette's ``run_in_threadpool`` does (the call runs in a worker
thread with a copy of the caller's context variables, its result or exception comes
back to the awaiting coroutine) through a ``ThreadPoolExecutor`` and
``loop.run_in_executor``. anyio's machinery under ``run_in_threadpool`` (its capacity
limiter, cancel scope and worker bookkeeping) costs about 150 µs of CPU per call with
32 calls in flight, the executor about 40 µs; every HTTP command makes one such call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# As many blocking calls at once as anyio's default limit allowed: saves that wait in
# a group commit for the one being recorded hold a thread each.
THREADS = 40

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """This process's pool (made on first use: a uvicorn worker is a process of its own)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(THREADS, thread_name_prefix="cityops-api")
        return _executor


async def in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a worker thread; the event loop goes on meanwhile."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor(), call)
