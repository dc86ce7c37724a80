#!/usr/bin/env python3
"""A TCP proxy that adds a fixed one-way delay in each direction (case 4: loopback has no
round-trip time and this machine has no netem).

  delay_proxy.py --listen 127.0.0.1:PORT --target 127.0.0.1:PORT --delay-ms 10

Every chunk read from one side is written to the other side `delay` after it was read, in
the order it was read: a link with a pure propagation delay and no bandwidth limit. With
10 ms each way a round trip gains 20 ms. One reader and one writer task per direction; the
reader never waits for the writer, so the delay is not multiplied by queueing. A half-close
(EOF) is forwarded after the same delay. Prints "ready PORT" on stdout once it listens.
"""

import argparse
import asyncio
import collections
import socket
import sys


def nodelay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def pipe(reader, writer, delay):
    loop = asyncio.get_running_loop()
    queue = collections.deque()
    ready = asyncio.Event()

    async def deliver():
        while True:
            while not queue:
                ready.clear()
                await ready.wait()
            due, data = queue.popleft()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                try:
                    if writer.can_write_eof():
                        writer.write_eof()
                except OSError:
                    pass
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(256 * 1024)
            queue.append((loop.time() + delay, data or None))
            ready.set()
            if not data:
                break
        await task
    except (ConnectionError, OSError):
        task.cancel()


async def handle(client_r, client_w, target, delay):
    try:
        server_r, server_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.close()
        return
    nodelay(client_w)
    nodelay(server_w)
    try:
        await asyncio.gather(
            pipe(client_r, server_w, delay), pipe(server_r, client_w, delay),
            return_exceptions=True)
    finally:
        for w in (client_w, server_w):
            try:
                w.close()
            except Exception:
                pass


def hostport(s):
    host, port = s.rsplit(":", 1)
    return host.strip("[]"), int(port)


async def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=hostport, required=True)
    p.add_argument("--target", type=hostport, required=True)
    p.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay")
    a = p.parse_args()
    delay = a.delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, a.target, delay), a.listen[0], a.listen[1], backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
