# Shared helpers for the real-application tests (sourced, not run).
# Each test prints PASS:/FAIL: lines and ends with "N passed, M failed".

passed=0
failed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
info() { echo "INFO: $*"; }
# check NAME CMD...: PASS when CMD succeeds.
check() { local name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

# A free TCP port on 127.0.0.1 (the kernel picks it; a race is unlikely
# within one test run).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http URL SECONDS: until URL answers at all (any status).
wait_http() {
  local url=$1 n=$(($2 * 4))
  while [ "$n" -gt 0 ]; do
    curl -s -o /dev/null --max-time 2 "$url" && return 0
    sleep 0.25; n=$((n - 1))
  done
  return 1
}

# wait_ok URL SECONDS: until URL answers 2xx.
wait_ok() {
  local url=$1 n=$(($2 * 4))
  while [ "$n" -gt 0 ]; do
    curl -sf -o /dev/null --max-time 2 "$url" && return 0
    sleep 0.25; n=$((n - 1))
  done
  return 1
}

# status METHOD URL [curl args...]: prints the HTTP status.
status() {
  local m=$1 u=$2; shift 2
  curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X "$m" "$@" "$u"
}

# error_code URL [curl args...]: the gateway's "error" field, or "-".
error_code() {
  local u=$1; shift
  curl -s --max-time 30 "$@" "$u" | sed -n 's/.*"error": *"\([a-z_]*\)".*/\1/p' | head -n 1 | grep . || echo -
}

now_ms() { date +%s%3N; }

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${scratch:-}" ] && [ -z "${KEEP_SCRATCH:-}" ] && rm -rf "$scratch"
}

tollgate_bin() {
  local root=$1
  if [ -n "${TOLLGATE_BIN:-}" ]; then echo "$TOLLGATE_BIN"; return; fi
  (cd "$root" && cargo build --quiet --bin tollgate) >&2
  echo "$root/target/debug/tollgate"
}
