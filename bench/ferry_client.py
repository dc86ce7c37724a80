#!/usr/bin/env python3
"""A small second client for the scale cases of the benchmark (case 6), written from
docs/PROTOCOL.md: asyncio + ssl, TLS 1.3, ALPN ferry/1, length-prefixed frames.

  idle   open N authenticated sessions and hold them; report the server's RSS before and
         after (read from /proc/PID/status), i.e. the memory cost of one idle session.
  fetch  open N sessions (ferry: logged in; https: TLS + keep-alive to nginx), then let them
         all fetch one file at the same moment; report p50/p99 latency and total MB/s.
         Every ferry download is checked against the server's SHA-256, every https body
         against the expected digest.

Sessions are spread over users (--users a,b,c; all with the password in FERRY_PASSWORD) and
over source addresses 127.0.0.2 ... (--sources K) so per-user and per-source caps can be met.
Prints one JSON object on stdout.
"""

import argparse
import asyncio
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import time

KIND_MESSAGE = 1
KIND_DATA = 2


def tls_context(ca, alpn):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if alpn:
        ctx.set_alpn_protocols([alpn])
    return ctx


class FerrySession:
    def __init__(self, reader, writer):
        self.r = reader
        self.w = writer
        self.next_id = 1

    @classmethod
    async def open(cls, host, port, ctx, src):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=host, local_addr=(src, 0) if src else None,
            limit=1 << 20)
        sslobj = writer.get_extra_info("ssl_object")
        if sslobj is None or sslobj.selected_alpn_protocol() != "ferry/1":
            writer.close()
            raise RuntimeError("ALPN ferry/1 not agreed")
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    def send(self, msg):
        payload = json.dumps(msg, separators=(",", ":")).encode()
        self.w.write(struct.pack(">IB", len(payload) + 1, KIND_MESSAGE) + payload)

    async def frame(self):
        head = await self.r.readexactly(5)
        length, kind = struct.unpack(">IB", head)
        if length == 0 or length > 1048577:
            raise RuntimeError(f"bad frame length {length}")
        body = await self.r.readexactly(length - 1)
        return kind, body

    async def message(self):
        kind, body = await self.frame()
        if kind != KIND_MESSAGE:
            raise RuntimeError("expected a message frame")
        return json.loads(body)

    async def hello_login(self, user, password):
        self.send({"op": "hello", "versions": [1], "software": "ferry-bench"})
        await self.w.drain()
        m = await self.message()
        if m.get("type") != "hello" or m.get("version") != 1:
            raise RuntimeError(f"hello refused: {m}")
        self.send({"op": "login", "id": self.next_id, "user": user, "password": password})
        self.next_id += 1
        await self.w.drain()
        m = await self.message()
        if m.get("type") != "ok":
            raise RuntimeError(f"login refused: {m.get('code')}: {m.get('message')}")

    async def get(self, path):
        """Downloads path into memory (hashing as it goes); returns its size."""
        rid = self.next_id
        self.next_id += 1
        self.send({"op": "get", "id": rid, "path": path})
        await self.w.drain()
        h = hashlib.sha256()
        got = 0
        size = None
        while True:
            kind, body = await self.frame()
            if kind == KIND_DATA:
                h.update(body)
                got += len(body)
                continue
            m = json.loads(body)
            t = m.get("type")
            if t == "file":
                size = m["size"]
            elif t == "progress":
                continue
            elif t == "ok":
                if got != size or m.get("sha256") != h.hexdigest():
                    raise RuntimeError("download does not verify")
                return got
            else:
                raise RuntimeError(f"get failed: {m}")

    async def close(self):
        try:
            self.w.close()
            await asyncio.wait_for(self.w.wait_closed(), 5)
        except Exception:
            pass


class HttpsSession:
    """An HTTP/1.1 keep-alive connection over TLS 1.3 (the nginx baseline)."""

    def __init__(self, reader, writer, host):
        self.r = reader
        self.w = writer
        self.host = host

    @classmethod
    async def open(cls, host, port, ctx, src):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=host, local_addr=(src, 0) if src else None,
            limit=1 << 20)
        return cls(reader, writer, host)

    async def get(self, path, expect_sha):
        self.w.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        await self.w.drain()
        head = await self.r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if " 200 " not in lines[0] + " ":
            raise RuntimeError(f"http: {lines[0]}")
        length = None
        for line in lines[1:]:
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        if length is None:
            raise RuntimeError("no content-length")
        h = hashlib.sha256()
        left = length
        while left:
            chunk = await self.r.read(min(left, 1 << 18))
            if not chunk:
                raise RuntimeError("http: early end of body")
            h.update(chunk)
            left -= len(chunk)
        if expect_sha and h.hexdigest() != expect_sha:
            raise RuntimeError("http body digest mismatch")
        return length

    async def close(self):
        try:
            self.w.close()
            await asyncio.wait_for(self.w.wait_closed(), 5)
        except Exception:
            pass


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def assignments(n, users, sources):
    """(user, source address) for session i: round-robin over both."""
    out = []
    for i in range(n):
        user = users[i % len(users)]
        src = f"127.0.0.{2 + i % sources}" if sources else None
        out.append((user, src))
    return out


async def open_many(args, n, ctx, password):
    """Opens n sessions, at most args.parallel handshakes+logins at a time."""
    sem = asyncio.Semaphore(args.parallel)
    users = args.users.split(",")
    errors = {}
    sessions = []

    async def one(user, src):
        async with sem:
            try:
                if args.proto == "ferry":
                    s = await FerrySession.open(args.host, args.port, ctx, src)
                    try:
                        await s.hello_login(user, password)
                    except BaseException:
                        await s.close()
                        raise
                else:
                    s = await HttpsSession.open(args.host, args.port, ctx, src)
                sessions.append(s)
            except Exception as e:  # counted, not fatal: the report says how many failed
                key = f"{type(e).__name__}: {e}"[:120]
                errors[key] = errors.get(key, 0) + 1

    await asyncio.gather(*(one(u, s) for u, s in assignments(n, users, args.sources)))
    return sessions, errors


async def cmd_idle(args):
    password = os.environ.get("FERRY_PASSWORD", "")
    ctx = tls_context(args.ca, "ferry/1")
    pid = args.server_pid
    # Warm up: a few logins first, so the runtime's threads already count in the baseline,
    # which then measures sessions only. Both samples wait out the second for which the server
    # keeps argon2's memory warm after the last login (it releases it within two), so
    # neither counts a login buffer as session memory.
    warm, _ = await open_many(args, args.warmup, ctx, password)
    for s in warm:
        await s.close()
    await asyncio.sleep(args.settle)
    before = rss_kib(pid)
    t0 = time.perf_counter()
    sessions, errors = await open_many(args, args.n, ctx, password)
    setup = time.perf_counter() - t0
    await asyncio.sleep(args.settle)
    after = rss_kib(pid)
    # Check the sessions are still alive and authenticated: a stat on a few of them.
    alive = 0
    for s in sessions[: min(20, len(sessions))]:
        try:
            s.send({"op": "stat", "id": s.next_id, "path": "/"})
            s.next_id += 1
            await s.w.drain()
            m = await asyncio.wait_for(s.message(), 10)
            alive += m.get("type") == "ok"
        except Exception:
            pass
    hwm = rss_kib(pid, "VmHWM")
    for s in sessions:
        await s.close()
    ok = len(sessions)
    print(json.dumps({
        "requested": args.n, "established": ok, "errors": errors,
        "rss_before_kib": before, "rss_after_kib": after, "hwm_kib": hwm,
        "per_session_kib": (after - before) / ok if ok else None,
        "setup_secs": setup, "checked_alive": alive,
    }))


async def cmd_fetch(args):
    password = os.environ.get("FERRY_PASSWORD", "")
    ctx = tls_context(args.ca, "ferry/1" if args.proto == "ferry" else "http/1.1")
    sessions, errors = await open_many(args, args.n, ctx, password)
    lat = []
    fails = {}
    total = 0

    async def one(s):
        nonlocal total
        t = time.perf_counter()
        try:
            if args.proto == "ferry":
                n = await s.get(args.path)
            else:
                n = await s.get(args.path, args.sha256)
            lat.append(time.perf_counter() - t)
            total += n
        except Exception as e:
            key = f"{type(e).__name__}: {e}"[:120]
            fails[key] = fails.get(key, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(s) for s in sessions))
    wall = time.perf_counter() - t0
    for s in sessions:
        await s.close()
    lat.sort()

    def pct(p):
        if not lat:
            return None
        return lat[min(len(lat) - 1, max(0, round(p / 100 * len(lat)) - 1))]

    print(json.dumps({
        "requested": args.n, "established": len(sessions), "connect_errors": errors,
        "fetched": len(lat), "fetch_errors": fails, "bytes": total, "wall_secs": wall,
        "p50_ms": pct(50) * 1000 if lat else None, "p99_ms": pct(99) * 1000 if lat else None,
        "mb_per_s": total / wall / 1e6 if wall > 0 else None,
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["idle", "fetch"])
    p.add_argument("--proto", choices=["ferry", "https"], default="ferry")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--users", default="alice", help="comma-separated user names")
    p.add_argument("--sources", type=int, default=0,
                   help="spread over this many source addresses 127.0.0.2...")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--parallel", type=int, default=8, help="handshakes+logins at once")
    p.add_argument("--server-pid", type=int, help="idle: the server process to measure")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--settle", type=float, default=2.5)
    p.add_argument("--path", default="/f1m.bin")
    p.add_argument("--sha256", help="https: expected digest of the body")
    args = p.parse_args()
    if args.mode == "idle" and not args.server_pid:
        p.error("idle needs --server-pid")
    coro = cmd_idle(args) if args.mode == "idle" else cmd_fetch(args)
    asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
