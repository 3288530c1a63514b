#!/usr/bin/env python3
"""Summarises a load-harness run (runs.jsonl from run.sh) as Markdown:
medians with min-max per target and concurrency, then the ratios the
performance targets are stated in."""
import json
import statistics
import sys
from collections import defaultdict

runs, env = sys.argv[1], sys.argv[2]
rows = defaultdict(list)
soak_conns = None
for line in open(runs):
    r = json.loads(line)
    if "soak_new_upstream_connections" in r:
        soak_conns = r["soak_new_upstream_connections"]
    else:
        rows[(r["target"], r["c"])].append(r)


def med(key, target, c):
    return statistics.median(r[key] for r in rows[(target, c)])


def spread(key, target, c, fmt):
    vals = [r[key] for r in rows[(target, c)]]
    return f"{fmt(statistics.median(vals))} ({fmt(min(vals))}–{fmt(max(vals))})"


def n(v):
    return f"{v:,.0f}"


def us(v):
    return f"{v:,.0f}"


def cpu(v):
    return f"{v:.1f}"


env_text = open(env).read().rstrip()
proxy_cores = 1
for line in env_text.splitlines():
    if line.startswith("proxy_cores:"):
        proxy_cores = int(line.split(":")[1])

print("```")
print(env_text)
print("```\n")
def split(target, c):
    """Median user / kernel CPU µs per request (runs from before the split
    was recorded have none)."""
    rs = rows[(target, c)]
    if not all("user_us_per_req" in r for r in rs):
        return "–"
    return f"{cpu(med('user_us_per_req', target, c))} / {cpu(med('sys_us_per_req', target, c))}"


print("| target | c | rps | p50 µs | p99 µs | CPU µs/req | user / kernel | non-2xx | socket errors |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for (target, c) in sorted(rows, key=lambda k: (k[1], k[0])):
    rs = rows[(target, c)]
    print(
        f"| {target} | {c} | {spread('rps', target, c, n)} | {spread('p50_us', target, c, us)} "
        f"| {spread('p99_us', target, c, us)} | {spread('cpu_us_per_req', target, c, cpu)} "
        f"| {split(target, c)} | {sum(r['non2xx'] for r in rs)} | {sum(r['socket_errors'] for r in rs)} |"
    )


def have(*keys):
    return all(k in rows for k in keys)


print("\n| target | measured | goal |")
print("| --- | --- | --- |")
if have(("tollgate", 32), ("nginx", 32)):
    print(f"| rps tollgate / nginx proxy, c=32 | {med('rps', 'tollgate', 32) / med('rps', 'nginx', 32):.2f} | ≥ 1.15 |")
    print(f"| CPU/req tollgate / nginx proxy, c=32 | {med('cpu_us_per_req', 'tollgate', 32) / med('cpu_us_per_req', 'nginx', 32):.2f} | ≤ 0.85 |")
    if split("tollgate", 32) != "–" and split("nginx", 32) != "–":
        user = med("user_us_per_req", "tollgate", 32) / med("user_us_per_req", "nginx", 32)
        kernel = med("sys_us_per_req", "tollgate", 32) / med("sys_us_per_req", "nginx", 32)
        room = 0.85 * med("cpu_us_per_req", "nginx", 32) - med("sys_us_per_req", "tollgate", 32)
        print(f"| user / kernel CPU/req tollgate / nginx proxy, c=32 | {user:.2f} / {kernel:.2f} | |")
        print(f"| user CPU/req the CPU goal leaves at this kernel cost, c=32 | {room:.1f} µs (nginx proxy uses {med('user_us_per_req', 'nginx', 32):.1f}) | |")
if have(("tollgate", 32), ("nginx-auth", 32)):
    print(f"| rps tollgate / nginx with map auth, c=32 | {med('rps', 'tollgate', 32) / med('rps', 'nginx-auth', 32):.2f} | |")
if have(("tollgate", 32), ("haproxy", 32)):
    print(f"| rps tollgate / HAProxy, c=32 | {med('rps', 'tollgate', 32) / med('rps', 'haproxy', 32):.2f} | |")
    print(f"| CPU/req tollgate / HAProxy, c=32 | {med('cpu_us_per_req', 'tollgate', 32) / med('cpu_us_per_req', 'haproxy', 32):.2f} | |")
if have(("tollgate", 32), ("haproxy-auth", 32)):
    print(f"| rps tollgate / HAProxy with map auth, c=32 | {med('rps', 'tollgate', 32) / med('rps', 'haproxy-auth', 32):.2f} | |")
if have(("tollgate", 32), ("tollgate-anonymous", 32)):
    gap = 1 - med("rps", "tollgate", 32) / med("rps", "tollgate-anonymous", 32)
    print(f"| rps policy route vs anonymous route | {gap * 100:+.1f} % | within 2 % |")
if have(("tollgate", 1), ("direct", 1)):
    print(f"| added p50 at c=1 over direct | {med('p50_us', 'tollgate', 1) - med('p50_us', 'direct', 1):.0f} µs | ≤ 35 µs |")
    print(f"| added p99 at c=1 over direct | {med('p99_us', 'tollgate', 1) - med('p99_us', 'direct', 1):.0f} µs | ≤ 80 µs |")
if have(("nginx", 1), ("direct", 1)):
    print(f"| nginx proxy's added p50 / p99 at c=1 | {med('p50_us', 'nginx', 1) - med('p50_us', 'direct', 1):.0f} / {med('p99_us', 'nginx', 1) - med('p99_us', 'direct', 1):.0f} µs | |")
if have(("tollgate", 32), ("tollgate-nolog", 32)):
    extra = med("cpu_us_per_req", "tollgate", 32) - med("cpu_us_per_req", "tollgate-nolog", 32)
    print(f"| access log's CPU per request (log on − off), c=32 | {extra:.1f} µs | |")
for code in ("401", "429"):
    if have((f"tollgate-{code}", 32), ("tollgate", 32)):
        print(f"| {code} rate / pass-through rate | {med('rps', f'tollgate-{code}', 32) / med('rps', 'tollgate', 32):.2f} | ≥ 2 |")
if have(("tollgate-rotate", 32), ("nginx-auth-rotate", 32)):
    print(f"| rotating 10,000 tokens: tollgate / nginx-auth rps | {med('rps', 'tollgate-rotate', 32) / med('rps', 'nginx-auth-rotate', 32):.2f} | |")
for c in (32, 256):
    if have(("tollgate", c), ("nginx", c), ("nginx-auth", c)):
        per_core = " / ".join(n(med("rps", t, c) / proxy_cores) for t in ("tollgate", "nginx", "nginx-auth"))
        print(f"| rps per proxy core ({proxy_cores}), c={c}: tollgate / nginx proxy / nginx + map auth | {per_core} | |")
    if have(("haproxy", c), ("haproxy-auth", c)):
        per_core = " / ".join(n(med("rps", t, c) / proxy_cores) for t in ("haproxy", "haproxy-auth"))
        print(f"| rps per proxy core ({proxy_cores}), c={c}: HAProxy / HAProxy + map auth | {per_core} | |")
for c in (1, 32, 256):
    if have(("tollgate", c), ("tollgate-baseline", c)):
        rps = med("rps", "tollgate", c) / med("rps", "tollgate-baseline", c)
        cost = med("cpu_us_per_req", "tollgate", c) / med("cpu_us_per_req", "tollgate-baseline", c)
        print(f"| this build / baseline build, c={c}: rps, CPU per request | {rps:.2f}, {cost:.2f} | |")
if ("tollgate-soak", 32) in rows:
    s = rows[("tollgate-soak", 32)][0]
    print(f"| soak: non-2xx, socket errors, new upstream connections | {s['non2xx']}, {s['socket_errors']}, {soak_conns} | 0, 0, 0 |")
