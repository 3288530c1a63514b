#!/usr/bin/env bash
# The wrk/nginx comparison: one command, one machine, one run.
#
#   benches/load/run.sh                 # 5 rounds of 10 s runs, about 20 minutes
#   ROUNDS=1 DURATION=3 benches/load/run.sh   # a quick look
#
# Starts, on 127.0.0.1:
#   upstream     nginx `return 200` (the API behind every proxy)
#   nginx        nginx as a reverse proxy done right: upstream keepalive (an
#                idle pool of 1024, so -c256 never opens new connections),
#                proxy_http_version 1.1, Connection "", buffered access log
#   nginx-auth   the same with a `map` of 10,001 bearer tokens checked
#   haproxy      HAProxy 2.6 as a reverse proxy: keep-alive on both sides,
#                idle upstream connections shared (`http-reuse always`),
#                X-Forwarded-For, an HTTP log line per request (to /dev/null)
#   haproxy-auth the same with a map of the same 10,001 tokens checked
#   tollgate     the release gateway: auth, scopes, rate limits, access log on
#                (and a second one with the access log off: tollgate-nolog;
#                with BASELINE=<binary>, a third, another build with the same
#                config: tollgate-baseline, run beside tollgate at every -c)
# and pins the upstream and the proxy under test to one core (PROXY_CORES) and
# wrk to another (WRK_CORES); LAYOUT=wide puts the upstream on cores 0-3, the
# proxy on 4-7 and wrk (8 threads) on 8-15, with 4 workers each. Then 5 interleaved rounds of wrk at -c1, -c32
# and -c256 against each, plus at -c32: tollgate's anonymous route, a run
# rotating 10,000 tokens (tollgate and nginx-auth), a bad token (401) and an
# exhausted token (429). Last, a 60 s soak at -c32 through tollgate counting
# new upstream connections. Each proxy's CPU time per request comes from
# /proc/<pid>/stat (utime + stime of all its processes; each is reported too).
#
# Writes benches/load/results/<UTC time>/{env.txt,runs.jsonl,summary.md} and
# prints the summary. Needs nginx, haproxy, wrk, taskset, curl, python3.
# Environment: ROUNDS (5), DURATION seconds per run (10), SOAK seconds (60;
# 0 skips it), CONNS (the concurrencies, "1 32 256"; the -c32 extras run when
# it holds 32),
# UPSTREAM_CORES (the proxy's), PROXY_CORES (0), WRK_CORES (1), WORKERS (1:
# nginx worker processes, HAProxy threads and tollgate runtimes), WRK_THREADS (1; never more
# than the connections), LAYOUT (wide: the 4 + 4 + 8 layout above), TOLLGATE
# (a binary; default: build release), BASELINE (a binary to compare with,
# e.g. the last release; none by default), BASE_PORT (18080), OUT (results
# directory).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

rounds=${ROUNDS:-5}
duration=${DURATION:-10}
soak=${SOAK:-60}
conns=${CONNS:-1 32 256}
if [ "${LAYOUT:-}" = wide ]; then
  : "${UPSTREAM_CORES:=0-3}" "${PROXY_CORES:=4-7}" "${WRK_CORES:=8-15}" "${WORKERS:=4}" "${WRK_THREADS:=8}"
fi
proxy_cores=${PROXY_CORES:-0}
upstream_cores=${UPSTREAM_CORES:-$proxy_cores}
wrk_cores=${WRK_CORES:-1}
workers=${WORKERS:-1}
wrk_threads=${WRK_THREADS:-1}
base=${BASE_PORT:-18080}
p_up=$base p_nginx=$((base + 1)) p_auth=$((base + 2)) p_tg=$((base + 3))
p_admin=$((base + 4)) p_status=$((base + 5)) p_quiet=$((base + 6)) p_admin2=$((base + 7))
p_baseline=$((base + 8)) p_admin3=$((base + 9))
p_haproxy=$((base + 10)) p_haproxy_auth=$((base + 11))
out=${OUT:-$here/results/$(date -u +%Y%m%dT%H%M%SZ)}

for tool in nginx haproxy wrk taskset curl python3; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 1; }
done
if [ -z "${TOLLGATE:-}" ]; then
  cargo build --release --quiet --bin tollgate
  bin=${CARGO_TARGET_DIR:-$root/target}/release/tollgate
else
  bin=$(realpath "$TOLLGATE")
fi

work=$(mktemp -d)
mkdir -p "$out"
tg_pid= quiet_pid= baseline_pid=
cleanup() {
  for p in $tg_pid $quiet_pid $baseline_pid; do kill "$p" 2>/dev/null || true; done
  for conf in upstream nginx auth haproxy haproxy-auth; do
    [ -f "$work/$conf.pid" ] && kill "$(cat "$work/$conf.pid")" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# --- tokens: one for the throughput runs, one with an exhausted limit, and
# 10,000 to rotate through; tollgate gets their hashes, nginx-auth its map.
python3 - "$work" <<'PY'
import hashlib, secrets, sys
work = sys.argv[1]
def tok(): return "tg_" + secrets.token_urlsafe(24)
main, limited = tok(), tok()
rotating = [tok() for _ in range(10000)]
open(f"{work}/main.txt", "w").write(main)
open(f"{work}/limited.txt", "w").write(limited)
open(f"{work}/tokens.txt", "w").write("\n".join(rotating) + "\n")
h = lambda s: hashlib.sha256(s.encode()).hexdigest()
with open(f"{work}/tokens.yaml", "w") as f:
    f.write("tokens:\n")
    f.write(f"  - {{ id: bench-main, sha256: {h(main)}, scopes: [scope:bench] }}\n")
    f.write(f"  - {{ id: bench-limited, sha256: {h(limited)}, scopes: [scope:bench],"
            " rate_limit: { requests: 1, per: 1h, burst: 1 } }\n")
    for i, s in enumerate(rotating):
        f.write(f"  - {{ id: bench-{i}, sha256: {h(s)}, scopes: [scope:bench] }}\n")
with open(f"{work}/map.conf", "w") as f:
    for s in [main] + rotating:
        f.write(f'    "Bearer {s}" 1;\n')
with open(f"{work}/tokens.map", "w") as f:
    for s in [main] + rotating:
        f.write(f"{s} 1\n")
PY
main_token=$(cat "$work/main.txt")
limited_token=$(cat "$work/limited.txt")

# --- nginx: the upstream, the plain proxy and the proxy with a token map.
nginx_conf() { # name port body
  cat >"$work/$1.conf" <<EOF
worker_processes $workers;
pid $work/$1.pid;
error_log $work/$1.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
$3
}
EOF
}
proxy_common="
  upstream api { server 127.0.0.1:$p_up; keepalive 1024; keepalive_requests 100000000; }
  log_format bench '\$remote_addr \$request_method \$request_uri \$status \$request_time';"
proxy_pass="
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_pass http://api;"
nginx_conf upstream "$p_up" "
  server {
    listen 127.0.0.1:$p_up reuseport backlog=4096;
    location / { return 200 \"ok\n\"; }
  }
  server {
    listen 127.0.0.1:$p_status;
    location / { stub_status; }
  }"
nginx_conf nginx "$p_nginx" "$proxy_common
  server {
    listen 127.0.0.1:$p_nginx reuseport backlog=4096;
    access_log $work/nginx.access.log bench buffer=64k flush=1s;
    location / {$proxy_pass
    }
  }"
nginx_conf auth "$p_auth" "$proxy_common
  map_hash_max_size 65536;
  map_hash_bucket_size 128;
  map \$http_authorization \$token_ok {
    default 0;
    include $work/map.conf;
  }
  server {
    listen 127.0.0.1:$p_auth reuseport backlog=4096;
    access_log $work/auth.access.log bench buffer=64k flush=1s;
    location / {
      if (\$token_ok = 0) { return 401; }$proxy_pass
    }
  }"
taskset -c "$upstream_cores" nginx -e "$work/upstream.error.log" -c "$work/upstream.conf"
for conf in nginx auth; do
  taskset -c "$proxy_cores" nginx -e "$work/$conf.error.log" -c "$work/$conf.conf"
done

# --- HAProxy: the plain proxy and the one with the token map (the word
# after "Bearer " looked up in it). Daemonised; its pid file names the one
# process that serves.
haproxy_conf() { # name port extra-frontend-lines
  cat >"$work/$1.cfg" <<EOF
global
  daemon
  pidfile $work/$1.pid
  nbthread $workers
  maxconn 8192
defaults
  mode http
  log stdout format raw local0
  option httplog
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend proxy
  bind 127.0.0.1:$2
$3
  default_backend api
backend api
  server up 127.0.0.1:$p_up maxconn 1024
EOF
}
haproxy_conf haproxy "$p_haproxy" ""
haproxy_conf haproxy-auth "$p_haproxy_auth" "  acl bearer req.hdr(authorization) -m beg \"Bearer \"
  acl known req.hdr(authorization),field(2,' '),map($work/tokens.map) -m found
  http-request deny deny_status 401 unless bearer known"
for conf in haproxy haproxy-auth; do
  taskset -c "$proxy_cores" haproxy -f "$work/$conf.cfg" >/dev/null 2>"$work/$conf.log"
done

# --- tollgate: auth, scopes, per-token limits (high enough not to bind the
# throughput runs), failed-auth guard (likewise) and the JSON access log.
cat >"$work/gateway.yaml" <<EOF
listen:
  - addr: 127.0.0.1:$p_tg
admin:
  addr: 127.0.0.1:$p_admin
log:
  format: json
  level: warn
  access: true
tokens:
  source: file
  path: tokens.yaml
  refresh_interval: 5s
auth:
  schemes: [bearer]
limits:
  per_token: { requests: 10000000, per: 1s, burst: 10000000 }
  failed_auth_per_ip: { requests: 10000000, per: 1s, burst: 10000000 }
routes:
  - prefix: /api
    upstream: http://127.0.0.1:$p_up
    scopes: [scope:bench]
  - prefix: /open
    upstream: http://127.0.0.1:$p_up
    scopes: [scope:bench]
    anonymous: read
EOF
# The same gateway with `log.access: false`, for the access log's cost; with
# BASELINE, the first config served by another build.
variant() { # name port admin-port [sed expressions...]
  local name=$1 port=$2 admin=$3
  shift 3
  sed -e "s/:$p_tg\$/:$port/" -e "s/:$p_admin\$/:$admin/" "$@" "$work/gateway.yaml" >"$work/$name.yaml"
}
gateway() { # binary name access-log -> starts it; its pid is $!
  TOLLGATE_WORKERS=$workers taskset -c "$proxy_cores" "$1" serve -c "$work/$2.yaml" \
    >"$3" 2>"$work/$2.log" &
}
variant quiet "$p_quiet" "$p_admin2" -e "s/access: true/access: false/"
gateway "$bin" gateway "$work/tollgate.access.log"
tg_pid=$!
gateway "$bin" quiet /dev/null
quiet_pid=$!
admins="$p_admin $p_admin2"
if [ -n "${BASELINE:-}" ]; then
  variant baseline "$p_baseline" "$p_admin3"
  gateway "$(realpath "$BASELINE")" baseline "$work/baseline.access.log"
  baseline_pid=$!
  admins="$admins $p_admin3"
fi
for admin in $admins; do
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null
done
for url in "http://127.0.0.1:$p_up/" "http://127.0.0.1:$p_nginx/api/x" "http://127.0.0.1:$p_haproxy/api/x"; do
  curl -fs "$url" >/dev/null
done
curl -fs -H "Authorization: Bearer $main_token" "http://127.0.0.1:$p_auth/api/x" >/dev/null
curl -fs -H "Authorization: Bearer $main_token" "http://127.0.0.1:$p_haproxy_auth/api/x" >/dev/null
curl -fs -H "Authorization: Bearer $main_token" "http://127.0.0.1:$p_tg/api/x" >/dev/null

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc)"
  echo "kernel: $(uname -r)"
  echo "nginx: $(nginx -v 2>&1 | sed 's/.*nginx\///')"
  echo "haproxy: $(haproxy -v | head -n 1 | awk '{print $3}')"
  echo "wrk: $(wrk -v 2>&1 | head -n 1 | awk '{print $2}')"
  echo "rustc: ${RUSTC_VERSION:-$(rustc -V 2>/dev/null | awk '{print $2}')}"
  echo "pinning: upstream on cores $upstream_cores, proxy on cores $proxy_cores, wrk on cores $wrk_cores"
  echo "workers: $workers per nginx, HAProxy and tollgate; wrk threads: $wrk_threads"
  echo "proxy_cores: $(taskset -c "$proxy_cores" nproc)"
  echo "rounds: $rounds x ${duration}s, soak ${soak}s"
} | tee "$out/env.txt"

# --- measurement helpers
with_workers() { # nginx pid file -> its master and worker process ids
  local m
  m=$(cat "$1")
  echo "$m" $(awk -v m="$m" '$4 == m { print $1 }' /proc/[0-9]*/stat 2>/dev/null)
}
pids_of() { # target -> the process ids whose CPU time is the proxy's
  case $1 in
    tollgate-nolog) echo "$quiet_pid" ;;
    tollgate-baseline) echo "$baseline_pid" ;;
    tollgate*) echo "$tg_pid" ;;
    haproxy-auth*) with_workers "$work/haproxy-auth.pid" ;;
    haproxy*) with_workers "$work/haproxy.pid" ;;
    nginx-auth*) with_workers "$work/auth.pid" ;;
    nginx*) with_workers "$work/nginx.pid" ;;
    direct) with_workers "$work/upstream.pid" ;;
  esac
}
cpu_ticks() { # pids... -> "utime stime", in clock ticks
  local u=0 k=0 p pu pk
  for p in "$@"; do
    read -r pu pk < <(awk '{print $14, $15}' "/proc/$p/stat")
    u=$((u + pu)) k=$((k + pk))
  done
  echo "$u $k"
}
hz=$(getconf CLK_TCK)

cat "$here/report.lua" >"$work/fixed.lua"
cat "$here/rotate.lua" "$here/report.lua" >"$work/rotate.lua"
export TOKENS_TXT=$work/tokens.txt

run() { # round target conns url [header] [script]
  local round=$1 target=$2 conns=$3 url=$4 header=${5:-} script=${6:-$work/fixed.lua}
  local pids before after line
  read -r -a pids <<<"$(pids_of "$target")"
  before=$(cpu_ticks "${pids[@]}")
  local args=("-t$((conns < wrk_threads ? conns : wrk_threads))" "-c$conns" "-d${duration}s" --latency -s "$script")
  [ -n "$header" ] && args+=(-H "$header")
  line=$(taskset -c "$wrk_cores" wrk "${args[@]}" "$url" | grep '^{"requests"')
  after=$(cpu_ticks "${pids[@]}")
  python3 - "$line" "$round" "$target" "$conns" "$before" "$after" "$hz" <<'PY' | tee -a "$out/runs.jsonl"
import json, sys
r = json.loads(sys.argv[1])
(u0, k0), (u1, k1) = (map(int, sys.argv[i].split()) for i in (5, 6))
hz = int(sys.argv[7])
r.update(round=int(sys.argv[2]), target=sys.argv[3], c=int(sys.argv[4]))
per_req = lambda ticks: round(ticks * 1e6 / hz / max(r["requests"], 1), 2)
r["cpu_us_per_req"] = per_req(u1 - u0 + k1 - k0)
r["user_us_per_req"], r["sys_us_per_req"] = per_req(u1 - u0), per_req(k1 - k0)
print(json.dumps(r))
PY
}

bearer="Authorization: Bearer $main_token"
tg=http://127.0.0.1:$p_tg
# Warm-up: every path once at load, results discarded.
duration=2 run 0 tollgate 32 "$tg/api/x" "$bearer" >/dev/null
duration=2 run 0 nginx 32 "http://127.0.0.1:$p_nginx/api/x" >/dev/null
duration=2 run 0 nginx-auth 32 "http://127.0.0.1:$p_auth/api/x" "$bearer" >/dev/null
duration=2 run 0 haproxy 32 "http://127.0.0.1:$p_haproxy/api/x" >/dev/null
duration=2 run 0 haproxy-auth 32 "http://127.0.0.1:$p_haproxy_auth/api/x" "$bearer" >/dev/null
: >"$out/runs.jsonl"

for round in $(seq 1 "$rounds"); do
  for c in $conns; do
    run "$round" direct "$c" "http://127.0.0.1:$p_up/api/x"
    run "$round" nginx "$c" "http://127.0.0.1:$p_nginx/api/x"
    run "$round" nginx-auth "$c" "http://127.0.0.1:$p_auth/api/x" "$bearer"
    run "$round" haproxy "$c" "http://127.0.0.1:$p_haproxy/api/x"
    run "$round" haproxy-auth "$c" "http://127.0.0.1:$p_haproxy_auth/api/x" "$bearer"
    run "$round" tollgate "$c" "$tg/api/x" "$bearer"
    if [ -n "$baseline_pid" ]; then
      run "$round" tollgate-baseline "$c" "http://127.0.0.1:$p_baseline/api/x" "$bearer"
    fi
  done
  [[ " $conns " == *" 32 "* ]] || continue
  run "$round" tollgate-anonymous 32 "$tg/open/x"
  run "$round" tollgate-nolog 32 "http://127.0.0.1:$p_quiet/api/x" "$bearer"
  run "$round" tollgate-rotate 32 "$tg/api/x" "" "$work/rotate.lua"
  run "$round" nginx-auth-rotate 32 "http://127.0.0.1:$p_auth/api/x" "" "$work/rotate.lua"
  run "$round" tollgate-401 32 "$tg/api/x" "Authorization: Bearer tg_not-a-token"
  run "$round" tollgate-429 32 "$tg/api/x" "Authorization: Bearer $limited_token"
done

# --- soak: new upstream connections while tollgate serves for $soak seconds.
if [ "$soak" -gt 0 ]; then
accepts() { curl -fs "http://127.0.0.1:$p_status/" | awk 'NR == 3 {print $1}'; }
a0=$(accepts)
duration=$soak run 0 tollgate-soak 32 "$tg/api/x" "$bearer"
a1=$(accepts)
# The second status request's own connection is one of the accepts.
echo "{\"soak_new_upstream_connections\": $((a1 - a0 - 1))}" | tee -a "$out/runs.jsonl"
fi

python3 "$here/summarize.py" "$out/runs.jsonl" "$out/env.txt" | tee "$out/summary.md"
