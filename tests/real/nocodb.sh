#!/usr/bin/env bash
# NocoDB 0.301.3 (npm `nocodb`, SQLite metadata) behind
# config/examples/nocodb.yaml, driven by NocoDB's own client (npm
# `nocodb-sdk`, its Api class) and curl. The gateway reads NocoDB's
# nc_api_tokens table with the preset's query.
# Needs: node and npm, curl, python3, sqlite3; a C++ toolchain and Node's
# headers (/usr/include/node) the first time, to build the sqlite3 module.
# The npm install is cached in $TOLLGATE_REAL_CACHE/nocodb-0.301.3.
# Prints PASS:/FAIL: lines, ends with "N passed, M failed", exits 1 on any
# failure; killed after TOLLGATE_REAL_TIMEOUT seconds (default 900).
set -uo pipefail
if [ -z "${TOLLGATE_REAL_TIMED:-}" ]; then
  TOLLGATE_REAL_TIMED=1 exec timeout -k 10 "${TOLLGATE_REAL_TIMEOUT:-900}" bash "$0" "$@"
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/real/lib.sh"
version=0.301.3

# --- install (cached by version) ------------------------------------------
cache="${TOLLGATE_REAL_CACHE:-$HOME/.cache/tollgate-real}/nocodb-$version"
if [ ! -e "$cache/.complete" ]; then
  started=$(date +%s)
  [ -e "$cache.tmp" ] && mv "$cache.tmp" "$cache.old.tmp.$$" && (rm -rf "$cache.old.tmp.$$" &)
  mkdir -p "$cache.tmp"
  # xlsx 0.20.3 is named by a URL outside the npm registry; the same
  # release is on npm as @e965/xlsx.
  echo "{\"name\":\"tollgate-real-nocodb\",\"private\":true,\"overrides\":{\"xlsx\":\"npm:@e965/xlsx@0.20.3\"}}" >"$cache.tmp/package.json"
  # --ignore-scripts: nocodb-sdk's preinstall insists on pnpm, and
  # sqlite3's install would fetch a prebuilt binary from GitHub; build it
  # from source instead, against the local Node headers when there are any.
  [ -e /usr/include/node/node_version.h ] && export npm_config_nodedir=/usr
  if (cd "$cache.tmp" && npm install --no-audit --no-fund --loglevel=error --ignore-scripts \
        "nocodb@$version" "nocodb-sdk@$version" && npm rebuild sqlite3 --loglevel=error) >"$cache.tmp.log" 2>&1; then
    # A half-made install is moved aside, not deleted in the way: removing
    # a node_modules tree takes minutes on a slow disk.
    [ -e "$cache" ] && mv "$cache" "$cache.old.$$" && (rm -rf "$cache.old.$$" &)
    mv "$cache.tmp" "$cache"; touch "$cache/.complete"
    info "installed nocodb $version into $cache in $(( $(date +%s) - started ))s"
  else
    tail -n 20 "$cache.tmp.log"; echo "FAIL: npm install nocodb@$version"; echo "0 passed, 1 failed"; exit 1
  fi
fi
bin=$(tollgate_bin "$root") || exit 1

scratch=$(mktemp -d)
trap cleanup EXIT
trap 'exit 1' INT TERM
nc_port=$(free_port); gw_port=$(free_port); adm_port=$(free_port)
nc=http://127.0.0.1:$nc_port
gw=http://127.0.0.1:$gw_port
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# --- NocoDB on 127.0.0.1, metadata in the scratch directory --------------
mkdir -p "$scratch/nc"
(cd "$scratch/nc" && NOCODB_MODULES=$cache PORT=$nc_port NC_DISABLE_TELE=true \
  NC_ATTACHMENT_FIELD_SIZE=104857600 exec node "$root/tests/real/nocodb-server.js") >"$scratch/nc.log" 2>&1 &
pids+=($!)
t0=$(date +%s)
wait_ok "$nc/api/v1/health" 400 || { fail "NocoDB did not start"; tail "$scratch/nc.log"; finish; exit 1; }
info "NocoDB $version up in $(( $(date +%s) - t0 ))s"

# --- NocoDB's own setup, straight to NocoDB: users log in there and make
# their tokens (the gateway removes xc-auth, so this is not a gateway job).
post() { curl -s --max-time 30 -X POST "$nc$1" -H 'content-type: application/json' "${@:3}" -d "$2"; }
admin_jwt=$(post /api/v1/auth/user/signup '{"email":"admin@example.com","password":"Adm1n-Passw0rd!"}' | json 'd["token"]')
invite=$(post /api/v1/users '{"email":"reader@example.com","roles":"org-level-viewer"}' -H "xc-auth: $admin_jwt" | json 'd["invite_token"]')
reader_jwt=$(post /api/v1/auth/user/signup "{\"email\":\"reader@example.com\",\"password\":\"Read3r-Passw0rd!\",\"token\":\"$invite\"}" | json 'd["token"]')
mktoken() { post /api/v1/tokens "{\"description\":\"$2\"}" -H "xc-auth: $1" | json 'd["token"]+" "+str(d["id"])'; }
read -r t_editor id_editor < <(mktoken "$admin_jwt" "data-entry integration")
read -r t_reader id_reader < <(mktoken "$reader_jwt" "reporting")
read -r t_export id_export < <(mktoken "$admin_jwt" "read-only nightly export")
check "NocoDB made 40-character tokens" test "${#t_editor}" = 40 -a "${#t_reader}" = 40

# --- the gateway with the shipped preset: addresses and the db path only --
cp "$root/config/examples/nocodb.yaml" "$scratch/gateway.yaml"
export TOLLGATE_LISTEN=127.0.0.1:$gw_port TOLLGATE_ADMIN=127.0.0.1:$adm_port
export NOCODB_UPSTREAM=$nc NOCODB_DB=$scratch/nc/noco.db
check "tollgate check passes on the preset over NocoDB's database" "$bin" check -c "$scratch/gateway.yaml" >/dev/null 2>&1
"$bin" serve -c "$scratch/gateway.yaml" >"$scratch/access.log" 2>"$scratch/gateway.err" &
pids+=($!)
wait_http "http://127.0.0.1:$adm_port/readyz" 30 || { fail "gateway did not start"; cat "$scratch/gateway.err"; finish; exit 1; }
listed=$("$bin" token list -c "$scratch/gateway.yaml" --json 2>/dev/null)
check "the gateway sees NocoDB's tokens: nc-$id_reader and nc-$id_export read-only, nc-$id_editor not" \
  python3 -c "
import json,sys
t={x['id']:x for x in json.loads(sys.argv[1])}
assert not t['nc-$id_editor']['read_only'] and t['nc-$id_reader']['read_only'] and t['nc-$id_export']['read_only']" "$listed"

# --- an attachment over 10 MiB through /api/v2/storage/upload ------------
head -c $((12 * 1024 * 1024)) /dev/urandom >"$scratch/big.bin"
up=$(curl -s --max-time 120 -H "xc-token: $t_editor" -F "file=@$scratch/big.bin" "$gw/api/v2/storage/upload?path=tollgate")
check "12 MiB upload through /api/v2/storage/upload" bash -c "echo '$up' | grep -q '\"size\":12582912'"
check "12 MiB to a plain /api/v2 route is body_too_large" test "$(error_code "$gw/api/v2/meta/bases" -H "xc-token: $t_editor" -F "file=@$scratch/big.bin")" = body_too_large

# --- NocoDB's client, through the gateway ---------------------------------
NOCODB_MODULES=$cache GW=$gw EDITOR=$t_editor READER=$t_reader READER_EMAIL=reader@example.com \
  ATTACHMENT="$up" STATE="$scratch/state.json" node "$root/tests/real/nocodb-client.js" >"$scratch/client.out" 2>&1
cat "$scratch/client.out"
passed=$((passed + $(grep -c '^PASS: ' "$scratch/client.out")))
failed=$((failed + $(grep -c '^FAIL: ' "$scratch/client.out")))
base=$(json 'd.get("baseId","")' <"$scratch/state.json" 2>/dev/null)
shared=$(json 'd.get("sharedViewUuid","")' <"$scratch/state.json" 2>/dev/null)

# --- downloads -------------------------------------------------------------
want=$(sha256sum <"$scratch/big.bin" | cut -d' ' -f1)
dl=$(echo "$up" | json 'd[0]["path"]' 2>/dev/null)
signed=$(echo "$up" | json 'd[0]["signedPath"]' 2>/dev/null)
check "download /$dl with a token: same bytes" test "$(curl -s -H "xc-token: $t_editor" "$gw/$dl" | sha256sum | cut -d' ' -f1)" = "$want"
check "download /$dl without a token: missing_token" test "$(error_code "$gw/$dl")" = missing_token
check "signed /dltemp/... URL without a token: same bytes" test "$(curl -s "$gw/$signed" | sha256sum | cut -d' ' -f1)" = "$want"

# --- xc-auth never reaches NocoDB ----------------------------------------
who=$(curl -s -H "xc-token: $t_reader" -H "xc-auth: $admin_jwt" "$gw/api/v1/auth/user/me" | json 'd.get("email")')
direct=$(curl -s -H "xc-token: $t_reader" -H "xc-auth: $admin_jwt" "$nc/api/v1/auth/user/me" | json 'd.get("email")')
check "reader token + admin's xc-auth through the gateway: NocoDB answers as $who (reader@example.com)" test "$who" = reader@example.com
info "the same request straight to NocoDB is answered as $direct"
check "admin's xc-auth alone through the gateway: missing_token" test "$(error_code "$gw/api/v1/auth/user/me" -H "xc-auth: $admin_jwt")" = missing_token
check "read-only by description: POST with the 'read-only nightly export' token is read_only_token" \
  test "$(error_code "$gw/api/v2/meta/bases" -X POST -H "xc-token: $t_export" -H 'content-type: application/json' -d '{"title":"x"}')" = read_only_token
check "xc-token and Authorization together: ambiguous_credentials" \
  test "$(error_code "$gw/api/v1/auth/user/me" -H "xc-token: $t_reader" -H "Authorization: Bearer $t_editor")" = ambiguous_credentials

# --- public surfaces --------------------------------------------------------
if [ -n "$shared" ]; then
  rows=$(curl -s "$gw/api/v1/db/public/shared-view/$shared/rows" | json 'len(d["list"])' 2>/dev/null)
  check "shared view rows without a token: $rows rows" test "${rows:-0}" -ge 3
  check "shared view PATCH without a token: missing_token" test "$(error_code "$gw/api/v1/db/public/shared-view/$shared/rows" -X PATCH)" = missing_token
else
  fail "no shared view to test"
fi
check "health without a token: 200" test "$(status GET "$gw/api/v1/health")" = 200
check "Swagger UI stylesheet without a token: 200" test "$(status GET "$gw/css/swagger-ui.css")" = 200
check "swagger.json of the base with a token: 200" test "$(status GET "$gw/api/v2/meta/bases/$base/swagger.json" -H "xc-token: $t_editor")" = 200
check "no token on the API: missing_token" test "$(error_code "$gw/api/v2/meta/bases")" = missing_token
check "sign-up through the gateway without a token: missing_token" test "$(error_code "$gw/api/v1/auth/user/signup" -X POST)" = missing_token
info "/api/v3/meta/bases with a token: NocoDB answers $(status GET "$gw/api/v3/meta/bases" -H "xc-token: $t_editor") (no v3 API in $version)"

# --- tokens made and deleted in NocoDB reach the gateway --------------------
wait_for() { # wait_for WANT_STATUS TOKEN: ms until the gateway answers that
  local want=$1 tok=$2 t=$(now_ms) n=0
  while [ "$(status GET "$gw/api/v1/auth/user/me" -H "xc-token: $tok")" != "$want" ]; do
    n=$((n + 1)); [ "$n" -gt 300 ] && { echo timeout; return; }; sleep 0.05
  done
  echo $(( $(now_ms) - t ))
}
read -r t_new id_new < <(mktoken "$admin_jwt" "short-lived")
ms=$(wait_for 200 "$t_new")
check "a token made in NocoDB is accepted after ${ms} ms" test "$ms" != timeout
curl -s -o /dev/null -X DELETE "$nc/api/v1/tokens/$id_new" -H "xc-auth: $admin_jwt"
ms=$(wait_for 401 "$t_new")
check "a token deleted in NocoDB is refused after ${ms} ms" test "$ms" != timeout
check "the refusal is invalid_token" test "$(error_code "$gw/api/v1/auth/user/me" -H "xc-token: $t_new")" = invalid_token
check "the access log names tokens by id, never the secret" bash -c "grep -q '\"token_id\":\"nc-$id_editor\"' '$scratch/access.log' && ! grep -q '$t_editor' '$scratch/access.log'"

finish
