#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: Tollgate beside
# nginx, HAProxy and a bare hyper proxy, on one machine, in one run.
#
#   benches/instructions.sh            # every target, about 5 minutes
#   benches/instructions.sh --check    # Tollgate only, against the budget
#
# Starts, on 127.0.0.1, an upstream (nginx `return 200`, run natively) and,
# one at a time under `valgrind --tool=callgrind --instr-atstart=no`:
#   tollgate      the gateway with benches/load/run.sh's config: auth, scopes,
#                 per-token and failed-auth limits, JSON access log on (to
#                 /dev/null), one runtime
#   nginx         nginx proxy, upstream keepalive (as run.sh)
#   nginx-auth    the same with a `map` of 10,001 bearer tokens
#   haproxy       HAProxy, plain, keep-alive and `http-reuse always`
#   haproxy-auth  the same with a map of the same 10,001 tokens
#   bare-hyper    benches/bare_proxy.rs: hyper 1 and a pooled legacy client,
#                 no policy
# nginx with `master_process off; daemon off;` and one worker, HAProxy with
# `nbthread 1` in the foreground. For each: WARMUP requests (500), then
# `callgrind_control -i on`, N requests (5,000) from `h2load --h1 -c32`
# (the hot token where auth is needed), `-i off`, a dump; the Ir of every
# thread's dump summed, divided by the 2xx count h2load reports (which must
# be all of them). Counted: user space of the proxy's process only, no
# kernel, no client, no upstream.
#
# Writes benches/instructions/results/<UTC time>.txt (the table and the
# environment). With --check, counts Tollgate alone (CHECK_RUNS times,
# default 1, and takes the median) and exits 1 when it is more than 3 %
# above benches/instructions.budget.
#
# Environment: N (5000), WARMUP (500), CONNS (32), PROFILE (the cargo
# profile for Tollgate and the bare proxy: release, or bench for --check),
# TOLLGATE, BARE_PROXY (binaries; default: built with PROFILE), BASE_PORT
# (19080), TARGETS (a subset, e.g. "tollgate bare-hyper"), OUT (results
# file), KEEP_DUMPS (a directory to copy the callgrind dumps to, for
# callgrind_annotate), MAX_SECONDS (1200: the run is stopped after that). Needs valgrind, nginx, haproxy, h2load, curl, python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

check=
[ "${1:-}" = --check ] && check=1
n=${N:-5000}
warmup=${WARMUP:-500}
conns=${CONNS:-32}
budget_file=$here/instructions.budget
tolerance=3
if [ -n "$check" ]; then
  profile=${PROFILE:-bench}
  targets=tollgate
  runs=${CHECK_RUNS:-1}
else
  profile=${PROFILE:-release}
  targets=${TARGETS:-tollgate nginx nginx-auth haproxy haproxy-auth bare-hyper}
  runs=1
fi
base=${BASE_PORT:-19080}
p_up=$base p_proxy=$((base + 1)) p_admin=$((base + 2))

need="valgrind callgrind_control h2load curl python3 nginx"
[[ " $targets " == *" haproxy"* ]] && need="$need haproxy"
for tool in $need; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is required" >&2; exit 1; }
done

target_dir=${CARGO_TARGET_DIR:-$root/target}
profile_dir=$profile
[ "$profile" = bench ] && profile_dir=release # cargo puts `bench` builds there
[ "$profile" = dev ] && profile_dir=debug
if [ -z "${TOLLGATE:-}" ] && [ "$profile" = bench ]; then
  # What `cargo bench --no-run` (CI's step) already built: the same features
  # as a plain `cargo build --profile bench`, which leaves out the
  # dev-dependencies' and rebuilds much of the tree.
  cargo bench --quiet --no-run
  tollgate_bin=$target_dir/release/tollgate
elif [ -z "${TOLLGATE:-}" ]; then
  cargo build --quiet --profile "$profile" --bin tollgate
  tollgate_bin=$target_dir/$profile_dir/tollgate
else
  tollgate_bin=$(realpath "$TOLLGATE")
fi
if [[ " $targets " == *" bare-hyper "* ]]; then
  if [ -z "${BARE_PROXY:-}" ]; then
    cargo build --quiet --profile "$profile" --example bare_proxy
    bare_bin=$target_dir/$profile_dir/examples/bare_proxy
  else
    bare_bin=$(realpath "$BARE_PROXY")
  fi
fi

work=$(mktemp -d)
proxy_pid=
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  [ -f "$work/upstream.pid" ] && kill "$(cat "$work/upstream.pid")" 2>/dev/null || true
  rm -rf "$work"
}
# Bounded: the whole run, builds excluded, in MAX_SECONDS (1200).
(
  trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "${MAX_SECONDS:-1200}" &
  s=$!
  wait "$s"
  echo "instructions.sh: out of time" >&2
  kill -TERM $$
) &
watchdog=$!
trap 'cleanup; kill "$watchdog" 2>/dev/null || true' EXIT
trap 'exit 1' TERM INT

# --- tokens, as benches/load/run.sh makes them: one hot token and 10,000
# more; tollgate gets their hashes, nginx and HAProxy their maps.
python3 - "$work" <<'PY'
import hashlib, secrets, sys
work = sys.argv[1]
def tok(): return "tg_" + secrets.token_urlsafe(24)
main = tok()
rotating = [tok() for _ in range(10000)]
open(f"{work}/main.txt", "w").write(main)
h = lambda s: hashlib.sha256(s.encode()).hexdigest()
with open(f"{work}/tokens.yaml", "w") as f:
    f.write("tokens:\n")
    f.write(f"  - {{ id: bench-main, sha256: {h(main)}, scopes: [scope:bench] }}\n")
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

# --- nginx configs: the upstream (run natively, daemonised) and the two
# proxies (run in the foreground, one process, under callgrind).
nginx_conf() { # name top-level-directives http-body
  cat >"$work/$1.conf" <<EOF
$2
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
foreground="worker_processes 1; master_process off; daemon off;"
proxy_common="
  upstream api { server 127.0.0.1:$p_up; keepalive 1024; keepalive_requests 100000000; }
  log_format bench '\$remote_addr \$request_method \$request_uri \$status \$request_time';"
proxy_pass="
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_pass http://api;"
nginx_conf upstream "worker_processes 1;" "
  server {
    listen 127.0.0.1:$p_up reuseport backlog=4096;
    location / { return 200 \"ok\n\"; }
  }"
nginx_conf nginx "$foreground" "$proxy_common
  server {
    listen 127.0.0.1:$p_proxy backlog=4096;
    access_log $work/nginx.access.log bench buffer=64k flush=1s;
    location / {$proxy_pass
    }
  }"
nginx_conf nginx-auth "$foreground" "$proxy_common
  map_hash_max_size 65536;
  map_hash_bucket_size 128;
  map \$http_authorization \$token_ok {
    default 0;
    include $work/map.conf;
  }
  server {
    listen 127.0.0.1:$p_proxy backlog=4096;
    access_log $work/auth.access.log bench buffer=64k flush=1s;
    location / {
      if (\$token_ok = 0) { return 401; }$proxy_pass
    }
  }"
nginx -e "$work/upstream.error.log" -c "$work/upstream.conf"

# --- HAProxy: keep-alive both sides, idle upstream connections reused by
# every client (`http-reuse always`), X-Forwarded-For like nginx's, an
# HTTP log line per request to stdout (/dev/null). The auth variant takes
# the word after "Bearer " and looks it up in a map of the same tokens.
haproxy_conf() { # name extra-frontend-lines
  cat >"$work/$1.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
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
  bind 127.0.0.1:$p_proxy
$2
  default_backend api
backend api
  server up 127.0.0.1:$p_up
EOF
}
haproxy_conf haproxy ""
haproxy_conf haproxy-auth "  acl bearer req.hdr(authorization) -m beg \"Bearer \"
  acl known req.hdr(authorization),field(2,' '),map($work/tokens.map) -m found
  http-request deny deny_status 401 unless bearer known"

# --- tollgate: benches/load/run.sh's gateway, except that the token file's
# periodic refresh (which reads and hashes the whole file) is pushed out of
# the measured window.
cat >"$work/gateway.yaml" <<EOF
listen:
  - addr: 127.0.0.1:$p_proxy
admin:
  addr: 127.0.0.1:$p_admin
log:
  format: json
  level: warn
  access: true
tokens:
  source: file
  path: tokens.yaml
  refresh_interval: 1h
auth:
  schemes: [bearer]
limits:
  per_token: { requests: 10000000, per: 1s, burst: 10000000 }
  failed_auth_per_ip: { requests: 10000000, per: 1s, burst: 10000000 }
routes:
  - prefix: /api
    upstream: http://127.0.0.1:$p_up
    scopes: [scope:bench]
EOF

for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$p_up/" >/dev/null && break; sleep 0.1; done

start() { # target -> the process under callgrind, its pid in $proxy_pid
  local vg=(valgrind --tool=callgrind --instr-atstart=no
    "--callgrind-out-file=$work/$1.cg.%p" --log-file="$work/$1.valgrind.log")
  rm -f "$work/$1".cg.*
  case $1 in
    tollgate) TOLLGATE_WORKERS=1 "${vg[@]}" "$tollgate_bin" serve -c "$work/gateway.yaml" \
      >/dev/null 2>"$work/tollgate.log" & ;;
    nginx | nginx-auth) "${vg[@]}" nginx -e "$work/$1.error.log" -c "$work/$1.conf" & ;;
    haproxy | haproxy-auth) "${vg[@]}" haproxy -db -f "$work/$1.cfg" >/dev/null 2>"$work/$1.log" & ;;
    bare-hyper) "${vg[@]}" "$bare_bin" "127.0.0.1:$p_proxy" "127.0.0.1:$p_up" & ;;
  esac
  proxy_pid=$!
  local url=http://127.0.0.1:$p_proxy/api/x
  for _ in $(seq 1 600); do
    curl -fs -m 5 -H "Authorization: Bearer $main_token" "$url" >/dev/null 2>&1 && return 0
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "instructions.sh: $1 did not come up" >&2
  cat "$work/$1.valgrind.log" >&2
  exit 1
}
stop() {
  kill "$proxy_pid" 2>/dev/null || true
  wait "$proxy_pid" 2>/dev/null || true
  proxy_pid=
}
load() { # requests -> the 2xx count h2load reports
  local out
  out=$(timeout 300 h2load --h1 -n "$1" -c "$conns" -H "Authorization: Bearer $main_token" \
    "http://127.0.0.1:$p_proxy/api/x")
  echo "$out" | sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p'
}
control() { # callgrind_control arguments, to the process under callgrind
  callgrind_control "$@" "$proxy_pid" >"$work/control.log" 2>&1 || {
    cat "$work/control.log" >&2
    exit 1
  }
}
count() { # target -> instructions per request, in $per_request (not in a
  # subshell, so that the EXIT trap knows the process to stop)
  local target=$1 ok total
  start "$target"
  ok=$(load "$warmup")
  [ "$ok" = "$warmup" ] || { echo "instructions.sh: $target warm-up: $ok of $warmup 2xx" >&2; exit 1; }
  control -i on
  ok=$(load "$n")
  control -i off
  control -d
  stop
  [ "$ok" = "$n" ] || { echo "instructions.sh: $target: $ok of $n 2xx" >&2; exit 1; }
  # Every dump, every thread: callgrind writes one `totals:` per dump
  # (its `summary:` is 0 when instrumentation was switched on and off).
  total=$(cat "$work/$target".cg.* | awk '/^totals:/ { s += $2 } END { printf "%d", s }')
  if [ -n "${KEEP_DUMPS:-}" ]; then mkdir -p "$KEEP_DUMPS" && cp "$work/$target".cg.* "$KEEP_DUMPS/"; fi
  per_request=$((total / ok))
}

env_text() {
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc)"
  echo "kernel: $(uname -r)"
  echo "valgrind: $(valgrind --version)"
  echo "nginx: $(nginx -v 2>&1 | sed 's/.*nginx\///')"
  command -v haproxy >/dev/null && echo "haproxy: $(haproxy -v | head -n 1 | awk '{print $3}')"
  echo "h2load: $(h2load --version | awk '{print $2}')"
  echo "rustc: $(rustc -V 2>/dev/null | awk '{print $2}'); profile: $profile"
  echo "load: $warmup warm-up, then $n requests counted, h2load --h1 -c$conns, one hot token"
}

if [ -n "$check" ]; then
  budget=$(grep -E '^[0-9]+$' "$budget_file" | head -n 1)
  [ -n "$budget" ] || { echo "instructions.sh: no count in $budget_file" >&2; exit 1; }
  counts=()
  for _ in $(seq 1 "$runs"); do
    count tollgate
    counts+=("$per_request")
  done
  measured=$(printf '%s\n' "${counts[@]}" | sort -n | sed -n "$(((runs + 1) / 2))p")
  limit=$((budget + budget * tolerance / 100))
  echo "tollgate ($profile profile, $n requests): $measured instructions per request (runs: ${counts[*]}), budget $budget, limit $limit (+$tolerance %)"
  echo "(under valgrind sha2 runs its software SHA-256: about 3.6k of these per request)"
  if [ "$measured" -gt "$limit" ]; then
    echo "instructions.sh: over budget by $(((measured - budget) * 100 / budget)) %" >&2
    exit 1
  fi
  exit 0
fi

declare -A ir
for t in $targets; do
  count "$t"
  ir[$t]=$per_request
  echo "$t: ${ir[$t]}" >&2
done
out=${OUT:-$here/instructions/results/$(date -u +%Y%m%dT%H%M%SZ).txt}
mkdir -p "$(dirname "$out")"
{
  env_text
  echo
  printf '%-14s %12s %12s %14s\n' target "Ir/request" "/ bare-hyper" "/ nginx-auth"
  for t in $targets; do
    printf '%-14s %12s' "$t" "${ir[$t]}"
    for ref in bare-hyper nginx-auth; do
      if [ -n "${ir[$ref]:-}" ]; then
        printf ' %12s ' "$(python3 -c "print(f'{${ir[$t]} / ${ir[$ref]}:.2f}')")"
      else
        printf ' %12s ' -
      fi
    done
    echo
  done
  echo
  echo "Ir: user-space instructions of the proxy's process, every thread; kernel,"
  echo "client and upstream not counted. Under valgrind sha2 runs its software"
  echo "SHA-256 (about 3.6k instructions per request of tollgate's count)."
} | tee "$out"
