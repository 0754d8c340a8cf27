"""A small HTTP/1.1 keep-alive load generator: `python -m bench.loadgen URL_PATH_PREFIX ...`.

N connections on loopback, each sending GET requests one after another (no pipelining) for a
fixed time, subjects rotating through a pool (`{subject}` in the path). Prints one JSON object:
requests, errors, seconds, requests per second, p50 and p99 latency in ms. Run in its own
process, so the server under test and the generator do not share an interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def _connection(
    host: str, port: int, requests: list[bytes], deadline: float, latencies: list[float]
) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    index = 0
    try:
        while time.perf_counter() < deadline:
            request = requests[index % len(requests)]
            index += 1
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            status_ok = head.startswith(b"HTTP/1.1 200")
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
            if not status_ok:
                errors += 1
    finally:
        writer.close()
    return errors


async def _run(args: argparse.Namespace) -> dict[str, float]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    headers = "".join(f"{h}\r\n" for h in args.header)
    target = url.path + (f"?{url.query}" if url.query else "")
    requests = [
        (
            f"GET {target.replace('{subject}', f'user-{n}')} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n{headers}\r\n"
        ).encode()
        for n in range(args.subjects)
    ]
    latencies: list[float] = []
    # A short warm-up (connections open, caches filled), then the measured run.
    await asyncio.gather(
        *(
            _connection(host, port, requests, time.perf_counter() + 0.5, [])
            for _ in range(args.connections)
        )
    )
    began = time.perf_counter()
    deadline = began + args.seconds
    errors = await asyncio.gather(
        *(_connection(host, port, requests, deadline, latencies) for _ in range(args.connections))
    )
    seconds = time.perf_counter() - began
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "errors": sum(errors),
        "seconds": seconds,
        "rps": len(latencies) / seconds,
        "p50_ms": quantile(0.50),
        "p99_ms": quantile(0.99),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("url", help="http://host:port/path?query, {subject} is replaced")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--header", action="append", default=[], help="Name: value")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
