#!/usr/bin/env bash
# Loads N tokens (default 1,000,000) from PostgreSQL into a release gateway
# and reports: time from start to ready (/readyz 200), memory after the load
# (VmRSS, VmHWM from /proc); a revocation's and a new token's time to reach
# the gateway (the trigger names the token, the gateway reads that row and
# applies it beside the index) with the peak memory meanwhile; what the
# periodic refresh costs; and a full re-read (a statement that changes more
# rows than a notification names) with its time and peak memory.
#
#   cargo build --release --bin tollgate
#   benches/load_tokens.sh [N]
#
# Environment: REFRESH (tokens.refresh_interval, default 10s), DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test),
# TOLLGATE (default target/release/tollgate), KEEP=1 to reuse a filled
# schema from an earlier run. Works in the schema `tollgate_bench_N`, which
# it drops and refills (unless KEEP=1). Needs psql and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-1000000}
db=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
bin=${TOLLGATE:-target/release/tollgate}
schema=tollgate_bench_$n
sep='?'; [[ $db == *\?* ]] && sep='&'
url="$db${sep}options=-csearch_path%3D$schema"

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
data_port=$(free_port)
admin_port=$(free_port)

cat >"$work/gateway.yaml" <<EOF
listen:
  - addr: 127.0.0.1:$data_port
admin:
  addr: 127.0.0.1:$admin_port
log:
  level: warn
  access: false
tokens:
  source: postgres
  url: "$url"
  refresh_interval: ${REFRESH:-10s}
routes:
  - prefix: /api
    upstream: http://127.0.0.1:9
    scopes: [scope:a]
EOF

now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
mem() { awk '/^(VmRSS|VmHWM)/ { printf "%s %.0f MiB  ", $1, $2 / 1024 }' "/proc/$pid/status"; echo; }
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f", ($14 + $15) * 1000 / hz }' "/proc/$pid/stat"; }
status() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "http://127.0.0.1:$data_port/api/x"; }

if [ -z "${KEEP:-}" ]; then
  psql "$db" -q -v ON_ERROR_STOP=1 -c "DROP SCHEMA IF EXISTS $schema CASCADE" -c "CREATE SCHEMA $schema"
  "$bin" token list -c "$work/gateway.yaml" >/dev/null   # creates the table and triggers
  t0=$(now)
  psql "$url" -q -v ON_ERROR_STOP=1 <<SQL
INSERT INTO tollgate_tokens (id, sha256, scopes, read_only, expires_at, created_at, updated_at)
SELECT 'bench-' || i,
       encode(sha256(convert_to('secret-' || i, 'UTF8')), 'hex'),
       (ARRAY['scope:a', 'scope:a scope:b', 'scope:b', 'scope:all'])[1 + i % 4],
       i % 3 = 0,
       CASE WHEN i % 10 = 0 THEN now() + interval '365 days' END,
       now(), now()
  FROM generate_series(1, $n) AS i;
ANALYZE tollgate_tokens;
SQL
  echo "filled $n rows in $(ms "$t0" "$(now)") ms"
fi
# Undo what an earlier run changed, so that KEEP=1 measures the same.
psql "$url" -q -v ON_ERROR_STOP=1 <<'SQL'
DELETE FROM tollgate_tokens WHERE id = 'bench-new';
UPDATE tollgate_tokens SET disabled = false WHERE id IN ('bench-4', 'bench-8') AND disabled;
UPDATE tollgate_tokens SET read_only = (substr(id, 7)::int % 3 = 0)
 WHERE id IN (SELECT 'bench-' || i FROM generate_series(10, 110) AS i)
   AND read_only <> (substr(id, 7)::int % 3 = 0);
SQL
echo "rows: $(psql "$url" -Atc 'SELECT count(*) FROM tollgate_tokens')"

t0=$(now)
"$bin" serve -c "$work/gateway.yaml" 2>"$work/stderr" &
pid=$!
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz")" = 200 ]; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/stderr"; exit 1; }
  sleep 0.02
done
echo "ready after $(ms "$t0" "$(now)") ms (gateway CPU: $(cpu) ms; load average: $(cut -d' ' -f1 /proc/loadavg))"
echo -n "after load:    "; mem
echo "known token: $(status secret-4) (502: accepted, no upstream), unknown: $(status nope)"

# One revocation: the trigger names the token; only its row is read. Reset
# VmHWM first (clear_refs 5) to see the peak of this change alone.
echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || echo "(cannot reset VmHWM; the peaks below are lifetime peaks)"
psql "$url" -q -c "UPDATE tollgate_tokens SET disabled = true, updated_at = now() WHERE id = 'bench-4'"
t0=$(now)
until [ "$(status secret-4)" = 401 ]; do sleep 0.005; done
echo "revocation applied after $(ms "$t0" "$(now)") ms"
psql "$url" -q -c "INSERT INTO tollgate_tokens (id, sha256, scopes) VALUES ('bench-new', encode(sha256(convert_to('secret-new', 'UTF8')), 'hex'), 'scope:a')"
t0=$(now)
until [ "$(status secret-new)" = 502 ]; do sleep 0.005; done
echo "new token accepted after $(ms "$t0" "$(now)") ms"
echo -n "during both:   "; mem

# Periodic refreshes: the first after a change takes the table's
# fingerprint afresh, the next finds it unchanged. Both are a scan on the
# server; the gateway receives one row.
echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
cpu0=$(cpu)
sleep 21
echo "21 s of periodic refreshes (every ${REFRESH:-10s}): $(( $(cpu) - cpu0 )) ms gateway CPU"
echo -n "after them:    "; mem

# A statement that changes more rows than a notification names: a full
# re-read, with the old index and the new one both alive for a moment.
# bench-16 (scope:a, not read-only) becomes read-only: its POST is refused
# (403) once the new index serves.
post() { curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $1" "http://127.0.0.1:$data_port/api/x"; }
echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
[ "$(post secret-16)" = 502 ] || { echo "bench-16 is not a writing token"; exit 1; }
psql "$url" -q -c "UPDATE tollgate_tokens SET read_only = NOT read_only WHERE id IN (SELECT 'bench-' || i FROM generate_series(10, 110) AS i)"
t0=$(now)
# A revocation while the full re-read runs: applied at once, and kept when
# the re-read's index replaces the one serving.
sleep 0.2
psql "$url" -q -c "UPDATE tollgate_tokens SET disabled = true WHERE id = 'bench-8'"
t1=$(now)
until [ "$(status secret-8)" = 401 ]; do sleep 0.005; done
echo "revocation during the full re-read applied after $(ms "$t1" "$(now)") ms"
until [ "$(post secret-16)" = 403 ]; do sleep 0.02; done
echo "full re-read applied after $(ms "$t0" "$(now)") ms; the revoked token: $(status secret-8)"
echo -n "during it:     "; mem
sleep 2
echo -n "2 s later:     "; mem
curl -s "http://127.0.0.1:$admin_port/metrics" | grep -E '^tollgate_(tokens_loaded|token_source_up|token_reloads_total)'
