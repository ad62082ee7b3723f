#!/usr/bin/env python3
"""Bounded loopback load test of `breakwater serve` (run by tests/server/serve_e2e_test.cc).

1. Opens IDLE keep-alive connections, each doing one GET /health and then staying open.
2. Runs STREAMS concurrent streaming completions; checks each response's HTTP chunked
   framing and SSE framing (data: lines, one finish_reason, [DONE] last) and the token count.
3. Sends a second GET /health on every idle connection: all must still be open.
4. Reports the server's resident memory before and after (VmRSS of --pid).

Usage: load_test.py --port P --pid PID [--idle 2000] [--streams 500] [--max-tokens 16]
Exit status 0 when every check passed; one summary line of JSON on stdout.
"""
import argparse
import asyncio
import json
import resource
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_body(reader, headers):
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip().split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if data[-2:] != b"\r\n":
                raise ValueError("chunk not followed by CRLF")
            if size == 0:
                return body
            body += data[:-2]
    n = int(headers.get("content-length", "0"))
    return await reader.readexactly(n)


async def health(reader, writer, port):
    writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    status, headers = await read_head(reader)
    await read_body(reader, headers)
    if status != 200:
        raise ValueError(f"/health said {status}")


async def stream_one(port, max_tokens, i):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = json.dumps({"prompt": [1, 403, 407, 261 + i % 50], "max_tokens": max_tokens, "ignore_eos": True,
                           "stream": True}).encode()
        writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        status, headers = await read_head(reader)
        if status != 200:
            raise ValueError(f"status {status}")
        if headers.get("transfer-encoding", "").lower() != "chunked":
            raise ValueError("a stream without chunked encoding")
        text = (await read_body(reader, headers)).decode()
        events = [e for e in text.split("\n\n") if e]
        if events[-1] != "data: [DONE]":
            raise ValueError("the stream does not end with [DONE]")
        tokens = 0
        finishes = 0
        for e in events[:-1]:
            if not e.startswith("data: "):
                raise ValueError(f"bad SSE event {e[:40]!r}")
            chunk = json.loads(e[6:])
            for c in chunk["choices"]:
                if c.get("finish_reason"):
                    finishes += 1
                if c.get("text"):
                    tokens += 1
        if finishes != 1:
            raise ValueError(f"{finishes} finish_reason chunks")
        return tokens
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--idle", type=int, default=2000)
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--max-tokens", type=int, default=16)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    rss_start = rss_kib(args.pid)
    t0 = time.monotonic()
    idle = []
    for _ in range(args.idle):  # opened in sequence: a burst of 2,000 connects would only test the backlog
        idle.append(await asyncio.open_connection("127.0.0.1", args.port))
    await asyncio.gather(*(health(r, w, args.port) for r, w in idle))
    rss_idle = rss_kib(args.pid)

    results = await asyncio.gather(*(stream_one(args.port, args.max_tokens, i) for i in range(args.streams)),
                                   return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, Exception)]
    stream_seconds = time.monotonic() - t0
    rss_streams = rss_kib(args.pid)

    idle_errors = await asyncio.gather(*(health(r, w, args.port) for r, w in idle), return_exceptions=True)
    idle_errors = [repr(e) for e in idle_errors if isinstance(e, Exception)]
    for _, w in idle:
        w.close()

    summary = {
        "idle_connections": args.idle,
        "idle_errors": len(idle_errors),
        "streams": args.streams,
        "stream_errors": len(errors),
        "first_errors": (errors + idle_errors)[:3],
        "seconds": round(stream_seconds, 2),
        "rss_mib": {"start": rss_start // 1024, "idle": rss_idle // 1024, "after_streams": rss_streams // 1024},
    }
    print(json.dumps(summary))
    return 0 if not errors and not idle_errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
