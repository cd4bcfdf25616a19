"""Client CPU per HTTP request: fleet's CmpHttpClient against httpx, both on trio.

Why fleet's load path does not use httpx: a virtual device spends most of its client CPU on
HTTP framing when that is a general-purpose client. This bench posts a CMP-sized body
(``--size`` bytes) to a server in another process (fleet's ``serve_http``, pinned to the other
core, answering a fixed body of the same size) and reports the client process's CPU per
request (``time.process_time``): sequentially over one kept-alive connection, and from
``--tasks`` concurrent tasks sharing one client (as a fleet run's devices share one).

Usage: python bench/http_client_cpu.py [--requests N] [--tasks T] [--size BYTES]
Needs the ``bench`` extra (httpx): pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.http.client import CmpHttpClient
from fleet.http.server import HttpRequest, HttpResponse, serve_http


def _pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})
    except (AttributeError, OSError):
        pass


def _server(port_queue: multiprocessing.Queue, size: int) -> None:  # type: ignore[type-arg]
    _pin(1)
    answer = bytes(size)

    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, answer)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, handler, "127.0.0.1", 0)
            port_queue.put(port if isinstance(port, int) else port[0])

    trio.run(main)


Post = Callable[[bytes], Awaitable[bytes]]


async def _measure(post: Post, body: bytes, n: int, tasks: int) -> float:
    """Client CPU seconds per request over ``n`` requests from ``tasks`` tasks."""
    for _ in range(50):  # warm-up: connections, imports, per-process caches
        await post(body)
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            await post(body)

    cpu0 = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    return (time.process_time() - cpu0) / n


async def _fleet(url: str, body: bytes, n: int, tasks: int) -> float:
    async with CmpHttpClient(url, max_connections=tasks) as client:

        async def post(data: bytes) -> bytes:
            return await client.post(data)

        return await _measure(post, body, n, tasks)


async def _httpx(url: str, body: bytes, n: int, tasks: int) -> float:
    limits = httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        headers = {"content-type": "application/pkixcmp"}

        async def post(data: bytes) -> bytes:
            response = await client.post(url, content=data, headers=headers)
            response.raise_for_status()
            return response.content

        return await _measure(post, body, n, tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--size", type=int, default=1200, help="request and response body bytes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    proc = ctx.Process(target=_server, args=(queue, args.size), daemon=True)
    proc.start()
    try:
        url = f"http://127.0.0.1:{queue.get(timeout=30)}/pkix/"
        _pin(0)
        body = bytes(args.size)
        print(f"client CPU µs per request, median of {args.rounds} rounds of {args.requests}")
        for label, tasks in (("sequential, one connection", 1), (f"{args.tasks} tasks", args.tasks)):
            for name, run in (("fleet CmpHttpClient", _fleet), ("httpx.AsyncClient", _httpx)):
                figures = [
                    trio.run(run, url, body, args.requests, tasks) * 1e6 for _ in range(args.rounds)
                ]
                print(f"  {label:28} {name:20} {statistics.median(figures):8.1f}")
    finally:
        proc.terminate()
        proc.join(5)


if __name__ == "__main__":
    main()
