#!/usr/bin/env python3
"""Memory per idle HTTP/1.1 keep-alive connection.

Starts `tollgate demo` (the gateway and its built-in echo upstream), opens N
client connections, sends one request on each (an anonymous read: no token
limit applies) and reads its answer, then leaves them all open and idle;
then waits 30 s. Prints the gateway's resident set size before, its peak,
and where it settles once every connection has parked and the allocator has
returned the buffers they no longer hold, per connection.

    python3 benches/idle_connections.py [BINARY] [N]

BINARY defaults to target/release/tollgate, N to 10000. Needs an open-file
limit above N (the script raises its own soft limit to the hard one).
"""
import os
import resource
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/tollgate")
count = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
REQUEST = b"GET /api/v3/info HTTP/1.1\r\nHost: bench\r\n\r\n"

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if hard < count + 100:
    sys.exit(f"the open-file limit ({hard}) is below {count} connections")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def answer(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))


def open_idle(n):
    """Opens n connections, one answered request each, and leaves them."""
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", 8080))
        s.sendall(REQUEST)
        answer(s)
        conns.append(s)
    # Past the 2 s after which an idle connection parks (the watchdog
    # looks every 2 s).
    time.sleep(5)
    return conns


gateway = subprocess.Popen([binary, "demo"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", 8080), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    # Warm-up: pooled upstream connections, allocator pages, the log thread.
    warm = socket.create_connection(("127.0.0.1", 8080))
    for _ in range(200):
        warm.sendall(REQUEST)
        answer(warm)
    time.sleep(1)
    start = rss_kib(gateway.pid)
    opened = time.time()
    conns = open_idle(count)
    samples = []
    while time.time() - opened < 30:
        samples.append(rss_kib(gateway.pid))
        time.sleep(1)
    settled = samples[-1]
    print(f"RSS {start / 1024:.1f} MiB before; with {count} idle connections "
          f"{max(samples) / 1024:.1f} MiB at most, {settled / 1024:.1f} MiB after 30 s: "
          f"{(settled - start) / count:.2f} KiB per idle connection")
    for s in conns:
        s.close()
finally:
    gateway.terminate()
    gateway.wait()
