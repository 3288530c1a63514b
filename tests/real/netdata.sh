#!/usr/bin/env bash
# Netdata 1.37 (Debian's `netdata`) behind config/examples/netdata.yaml,
# driven by Prometheus's real scrape (Debian's `prometheus`) and by curl.
# Needs: netdata, prometheus, curl, python3 (installed by .ci/run; on a
# machine without them, run as root and they are installed with apt-get).
# Prints PASS:/FAIL: lines, ends with "N passed, M failed", exits 1 on any
# failure. Bounded: the whole run is killed after TOLLGATE_REAL_TIMEOUT
# seconds (default 600).
set -uo pipefail
if [ -z "${TOLLGATE_REAL_TIMED:-}" ]; then
  TOLLGATE_REAL_TIMED=1 exec timeout -k 10 "${TOLLGATE_REAL_TIMEOUT:-600}" bash "$0" "$@"
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/real/lib.sh"

for cmd in netdata prometheus; do
  command -v "$cmd" >/dev/null 2>&1 && continue
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends netdata prometheus >/dev/null
  fi
  command -v "$cmd" >/dev/null 2>&1 || { echo "FAIL: $cmd is not installed (apt-get install netdata prometheus)"; echo "0 passed, 1 failed"; exit 1; }
done
info "$(netdata -v 2>&1 | head -n 1); $(prometheus --version 2>&1 | head -n 1)"
bin=$(tollgate_bin "$root") || exit 1

scratch=$(mktemp -d)
trap cleanup EXIT
trap 'exit 1' INT TERM
nd_port=$(free_port); gw_port=$(free_port); adm_port=$(free_port); prom_port=$(free_port)
nd=http://127.0.0.1:$nd_port
gw=http://127.0.0.1:$gw_port

# --- Netdata on 127.0.0.1, everything under the scratch directory -------
mkdir -p "$scratch"/nd/{etc,cache,lib,log,run}
cat > "$scratch/nd/etc/netdata.conf" <<CONF
[global]
    run as user = $(id -un)
    memory mode = ram
    history = 600
    update every = 1
[directories]
    config = $scratch/nd/etc
    cache = $scratch/nd/cache
    lib = $scratch/nd/lib
    log = $scratch/nd/log
    run = $scratch/nd/run
    home = $scratch/nd/lib
[logs]
    access = $scratch/nd/log/access.log
    error = $scratch/nd/log/error.log
    debug = $scratch/nd/log/debug.log
[web]
    bind to = 127.0.0.1:$nd_port
[plugins]
    enable running new plugins = no
    proc = yes
    diskspace = no
    cgroups = no
    tc = no
    idlejitter = no
    apps = no
    python.d = no
    charts.d = no
    go.d = no
    ebpf = no
    statsd = no
[ml]
    enabled = no
[registry]
    enabled = no
CONF
netdata -D -c "$scratch/nd/etc/netdata.conf" >"$scratch/nd/stdout" 2>&1 &
pids+=($!)

# --- the gateway, with the shipped preset; only addresses and paths set --
cp "$root/config/examples/netdata.yaml" "$scratch/gateway.yaml"
export TOLLGATE_LISTEN=127.0.0.1:$gw_port TOLLGATE_ADMIN=127.0.0.1:$adm_port
export NETDATA_UPSTREAM=$nd NETDATA_TOKENS=$scratch/tokens.yaml
mk() { "$bin" token create -c "$scratch/gateway.yaml" "$@" 2>/dev/null; }
t_admin=$(mk --id ops --scope scope:all)
t_ui=$(mk --id dashboard --scope scope:agent-ui)
t_graf=$(mk --id grafana --scope scope:grafana --read-only)
t_prom=$(mk --id prometheus --scope scope:prometheus --read-only)
t_audit=$(mk --id auditor --scope scope:all --read-only)
check "tollgate check passes on the preset" "$bin" check -c "$scratch/gateway.yaml" >/dev/null
"$bin" serve -c "$scratch/gateway.yaml" >"$scratch/access.log" 2>"$scratch/gateway.err" &
pids+=($!)

wait_http "$nd/api/v1/info" 60 || { fail "Netdata did not start"; tail "$scratch/nd/stdout"; finish; exit 1; }
wait_http "http://127.0.0.1:$adm_port/readyz" 30 || { fail "gateway did not start"; cat "$scratch/gateway.err"; finish; exit 1; }
# The first samples: data queries need a few seconds of history.
for _ in $(seq 1 40); do
  curl -sf "$nd/api/v1/data?chart=system.cpu&after=-5" | grep -q '"data"' && break; sleep 0.25
done
auth() { echo "Authorization: Bearer $1"; }

# --- Prometheus scrapes allmetrics through the gateway ------------------
printf %s "$t_prom" >"$scratch/prom.token"
printf %s "tg_notarealtoken" >"$scratch/bad.token"
cat > "$scratch/prometheus.yml" <<CONF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: netdata
    metrics_path: /api/v1/allmetrics
    params: { format: [prometheus] }
    authorization: { type: Bearer, credentials_file: $scratch/prom.token }
    static_configs: [ { targets: ["127.0.0.1:$gw_port"] } ]
  - job_name: netdata-wrong-token
    metrics_path: /api/v1/allmetrics
    params: { format: [prometheus] }
    authorization: { type: Bearer, credentials_file: $scratch/bad.token }
    static_configs: [ { targets: ["127.0.0.1:$gw_port"] } ]
CONF
prometheus --config.file="$scratch/prometheus.yml" --storage.tsdb.path="$scratch/prom" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$scratch/prom.log" 2>&1 &
pids+=($!)
prom=http://127.0.0.1:$prom_port
wait_http "$prom/-/ready" 60 || fail "Prometheus did not start"
pq() { curl -s --max-time 5 "$prom/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else "none")'; }
up=none; down=none
for _ in $(seq 1 60); do
  up=$(pq 'up{job="netdata"}'); down=$(pq 'up{job="netdata-wrong-token"}')
  [ "$up" = 1 ] && [ "$down" = 0 ] && break; sleep 0.5
done
check "Prometheus scrape through the gateway: up{job=netdata} = 1 (got $up)" test "$up" = 1
check "Prometheus scrape with an unknown token: up = 0 (got $down)" test "$down" = 0
n=$(pq 'count({__name__=~"netdata_system_cpu.*"})')
check "Prometheus stored Netdata's system.cpu series (got $n)" test "${n:-none}" != none
check "the scrape is in the access log as token prometheus" grep -q '"token_id":"prometheus"' "$scratch/access.log"

# --- scopes ---------------------------------------------------------------
check "scrape token: allmetrics 200" test "$(status GET "$gw/api/v1/allmetrics?format=prometheus" -H "$(auth "$t_prom")")" = 200
check "scrape token: /api/v1/data is insufficient_scope" test "$(error_code "$gw/api/v1/data?chart=system.cpu" -H "$(auth "$t_prom")")" = insufficient_scope
check "scrape token: /api/v1/charts is insufficient_scope" test "$(error_code "$gw/api/v1/charts" -H "$(auth "$t_prom")")" = insufficient_scope
check "dashboard token: /api/v1/charts lists system.cpu" bash -c "curl -s -H '$(auth "$t_ui")' '$gw/api/v1/charts' | grep -q '\"system.cpu\"'"
check "dashboard token: /api/v1/data returns points" bash -c "curl -s -H '$(auth "$t_ui")' '$gw/api/v1/data?chart=system.cpu&after=-5&format=json' | grep -q '\"data\"'"
check "grafana read-only token: /api/v1/data 200" test "$(status GET "$gw/api/v1/data?chart=system.cpu&after=-5" -H "$(auth "$t_graf")")" = 200
check "grafana read-only token: /api/v1/alarms 200" test "$(status GET "$gw/api/v1/alarms" -H "$(auth "$t_graf")")" = 200
check "no token: /api/v1/data is missing_token" test "$(error_code "$gw/api/v1/data?chart=system.cpu")" = missing_token
check "no token: /api/v3/info is missing_token (2.x main API never public)" test "$(error_code "$gw/api/v3/info")" = missing_token
check "no token: / (dashboard) is missing_token" test "$(error_code "$gw/")" = missing_token
check "unknown token: invalid_token" test "$(error_code "$gw/api/v1/info" -H "$(auth tg_unknown)")" = invalid_token

# --- badges are public for reads ----------------------------------------
ct=$(curl -s -o /dev/null -w '%{http_code} %{content_type}' "$gw/api/v1/badge.svg?chart=system.cpu")
check "no token: badge.svg 200 image/svg+xml (got $ct)" test "${ct%%;*}" = "200 image/svg+xml"
check "no token: POST badge.svg is missing_token" test "$(error_code "$gw/api/v1/badge.svg?chart=system.cpu" -X POST)" = missing_token

# --- management: a state-changing GET ------------------------------------
key=$(cat "$scratch/nd/lib/netdata.api.key")
silence="$gw/api/v1/manage/health?cmd=SILENCE%20ALL"
check "read-only scope:all token: manage GET is read_only_token" test "$(error_code "$silence" -H "$(auth "$t_audit")" -H "X-Auth-Token: $key")" = read_only_token
check "read-only scope:all token: /api/v1/data 200" test "$(status GET "$gw/api/v1/data?chart=system.cpu&after=-5" -H "$(auth "$t_audit")")" = 200
check "dashboard token: manage is insufficient_scope" test "$(error_code "$silence" -H "$(auth "$t_ui")" -H "X-Auth-Token: $key")" = insufficient_scope
check "no token: manage is missing_token" test "$(error_code "$silence" -H "X-Auth-Token: $key")" = missing_token
body=$(curl -s -H "$(auth "$t_admin")" -H "X-Auth-Token: $key" "$silence")
check "operator token + Netdata's X-Auth-Token: SILENCE ALL applied ($body)" bash -c "curl -s -H 'X-Auth-Token: $key' '$nd/api/v1/manage/health?cmd=LIST' | grep -q '\"all\": true'"
curl -s -o /dev/null -H "$(auth "$t_admin")" -H "X-Auth-Token: $key" "$gw/api/v1/manage/health?cmd=RESET"
check "operator token without X-Auth-Token: Netdata itself refuses (403)" test "$(status GET "$silence" -H "$(auth "$t_admin")")" = 403
check "registry (state-changing GETs): dashboard token is insufficient_scope" test "$(error_code "$gw/api/v1/registry?action=hello" -H "$(auth "$t_ui")")" = insufficient_scope
check "netdata.conf: dashboard token is insufficient_scope" test "$(error_code "$gw/netdata.conf" -H "$(auth "$t_ui")")" = insufficient_scope
check "netdata.conf: operator token 200" test "$(status GET "$gw/netdata.conf" -H "$(auth "$t_admin")")" = 200

# --- revocation: Netdata has no token table; the token file is watched --
t_leave=$(mk --id leaving --scope scope:agent-ui)
for _ in $(seq 1 100); do [ "$(status GET "$gw/api/v1/info" -H "$(auth "$t_leave")")" = 200 ] && break; sleep 0.05; done
started=$(now_ms)
"$bin" token revoke -c "$scratch/gateway.yaml" leaving 2>/dev/null
took=-
for _ in $(seq 1 200); do
  if [ "$(status GET "$gw/api/v1/info" -H "$(auth "$t_leave")")" = 401 ]; then took=$(($(now_ms) - started)); break; fi
  sleep 0.02
done
check "a token revoked with \`tollgate token revoke\` is refused within 5 s (took ${took} ms)" test "$took" != - -a "${took/-/99999}" -lt 5000

# --- upstream connections per request ----------------------------------
# Netdata keeps a connection open only when asked (`Connection:
# keep-alive`); the preset's `send_keep_alive: true` asks. Netdata's access
# log has one CONNECTED line per connection and one DATA line per request,
# both with the client's port; count the ports that served /api/v1/info
# (Prometheus scrapes meanwhile, on other paths). On a reused connection
# Netdata logs the path with a `?` it did not receive.
ports_since() { tail -n +"$(($1 + 1))" "$scratch/nd/log/access.log" | grep "'DATA'.*'/api/v1/info?\\?'" | grep -o "\]:[0-9]*'" | sort -u | wc -l; }
loglen() { wc -l <"$scratch/nd/log/access.log"; }
sleep 1; mark=$(loglen)
urls=(); for _ in $(seq 1 20); do urls+=(-o /dev/null "$gw/api/v1/info"); done
curl -s -H "$(auth "$t_ui")" "${urls[@]}"
sleep 1
via_gw=$(ports_since "$mark")
# Each worker thread (one per CPU) keeps its own pool.
check "20 requests through the gateway reuse upstream connections (used $via_gw, at most one per worker)" test "$via_gw" -ge 1 -a "$via_gw" -le "$(nproc)"
mark=$(loglen)
curl -s "${urls[@]/#$gw/$nd}"
sleep 1
info "20 direct requests on one connection without Connection: keep-alive used $(ports_since "$mark") (Netdata closes after each answer)"

# --- a real Netdata child streaming through the gateway -----------------
# Netdata's own protocol after an HTTP-like handshake the gateway does not
# proxy: the handshake must get the contract's JSON 400 and a log line that
# does not carry the child's API key.
mkdir -p "$scratch"/child/{etc,cache,lib,log,run}
sed -e "s|$scratch/nd/|$scratch/child/|g" -e "s|bind to = .*|mode = none|" \
  "$scratch/nd/etc/netdata.conf" >"$scratch/child/etc/netdata.conf"
cat > "$scratch/child/etc/stream.conf" <<CONF
[stream]
    enabled = yes
    destination = 127.0.0.1:$gw_port
    api key = 11111111-2222-3333-4444-555555555555
CONF
lines=$(wc -l <"$scratch/access.log")
netdata -D -c "$scratch/child/etc/netdata.conf" >"$scratch/child/stdout" 2>&1 &
child=$!; pids+=("$child")
for _ in $(seq 1 40); do grep -q 'STREAM.*\(refused\|denied\|failed\|400\|not\)' "$scratch/child/log/error.log" 2>/dev/null && break; sleep 0.25; done
sleep 1
said=$(grep -i 'STREAM' "$scratch/child/log/error.log" 2>/dev/null | grep -iv 'thread\|started' | tail -n 2 | sed 's/^[0-9: -]*netdata //' | tr '\n' '|')
info "a Netdata child streaming to the gateway: ${said:-nothing logged}"
streamed=$(tail -n +"$((lines + 1))" "$scratch/access.log" | grep -v '"path":"/api/v1/allmetrics"' || true)
check "the child's STREAM handshake is logged as a 400 refusal" grep -q '"status":400,"error":"bad_' <<<"$streamed"
check "the child's API key is in no access-log line" bash -c '! grep -q 11111111-2222-3333 "$1"' _ "$scratch/access.log"
kill "$child" 2>/dev/null

finish
