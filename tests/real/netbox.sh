#!/usr/bin/env bash
# NetBox 4.7.3 (PyPI `netbox`, served by gunicorn, PostgreSQL and Redis)
# behind config/examples/netbox.yaml, driven by NetBox's own client (PyPI
# `pynetbox`) and curl. The gateway reads NetBox's users_token and
# users_user tables with the preset's query; tokens are made by NetBox's
# own model, so every v2 digest is NetBox's.
# Needs: PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres
# (PGHOST/PGPORT/PGUSER override), Redis on 127.0.0.1:6379 (databases 6 and
# 7 are flushed and used), curl, psql, redis-cli, and a Python >= 3.12
# (python3.13, python3.12, a pyenv 3.12+, or python3 if new enough; else
# one is installed with uv from PyPI, see find_python).
# With chromium and chromedriver (Debian's chromium, chromium-driver), the
# web UI is also driven in headless Chromium behind the gateway's login
# page (docs/apps/netbox.md, Browsers); without them that part is skipped.
# The venv is cached in $TOLLGATE_REAL_CACHE/netbox-4.7.3; the migrated
# schema is kept as the PostgreSQL template database tollgate_netbox_tpl_4_7_3
# and each run gets a fresh copy, dropped at the end.
# Prints PASS:/FAIL: lines, ends with "N passed, M failed", exits 1 on any
# failure; killed after TOLLGATE_REAL_TIMEOUT seconds (default 900: a cold
# run installs and migrates: 10 minutes on a busy 2-core machine; a cached
# run takes a little over 1).
set -uo pipefail
if [ -z "${TOLLGATE_REAL_TIMED:-}" ]; then
  TOLLGATE_REAL_TIMED=1 exec timeout -k 10 "${TOLLGATE_REAL_TIMEOUT:-900}" bash "$0" "$@"
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/real/lib.sh"
version=4.7.3
pynetbox_version=7.9.0
run_started=$(date +%s)
phase_started=$run_started
phase() { local now; now=$(date +%s); info "phase $1: $((now - phase_started))s"; phase_started=$now; }
bail() { fail "$1"; [ -n "${2:-}" ] && [ -e "$2" ] && tail -n 30 "$2"; finish; exit 1; }

export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
export PGOPTIONS="--client-min-messages=warning"
for cmd in curl psql redis-cli; do
  command -v "$cmd" >/dev/null 2>&1 || bail "$cmd is not installed"
done
psql -d postgres -qtAc 'select 1' >/dev/null 2>&1 || bail "no PostgreSQL at $PGHOST:$PGPORT as $PGUSER"
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || bail "no Redis at 127.0.0.1:6379"

# A Python >= 3.12 (NetBox 4.7's minimum). Debian 12 ships 3.11, so on a
# fresh CI machine none may exist: then uv (from PyPI, pip --target)
# installs a standalone CPython 3.12 under the cache. uv needs nothing but
# pip and network access to PyPI and GitHub (python-build-standalone).
cache_root="${TOLLGATE_REAL_CACHE:-$HOME/.cache/tollgate-real}"
new_enough() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
find_python() {
  local c
  for c in python3.13 python3.12 "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 python3; do
    if command -v "$c" >/dev/null 2>&1 && new_enough "$c"; then command -v "$c"; return 0; fi
  done
  local uvdir=$cache_root/uv
  if [ ! -x "$uvdir/bin/uv" ]; then
    python3 -m pip install --quiet --target "$uvdir/lib" uv >&2 || return 1
    mkdir -p "$uvdir/bin" && ln -sf "$(ls "$uvdir"/lib/bin/uv)" "$uvdir/bin/uv"
  fi
  UV_PYTHON_INSTALL_DIR=$uvdir/python "$uvdir/bin/uv" python install 3.12 >&2 || return 1
  UV_PYTHON_INSTALL_DIR=$uvdir/python "$uvdir/bin/uv" python find 3.12
}

# --- install (cached by version) ------------------------------------------
cache="$cache_root/netbox-$version"
py=$cache/venv/bin/python
if [ ! -e "$cache/.complete" ]; then
  started=$(date +%s)
  base_python=$(find_python) || bail "no Python >= 3.12 and uv could not install one"
  info "installing netbox $version with $("$base_python" -V 2>&1)"
  rm -rf "$cache.tmp"; mkdir -p "$cache.tmp"
  # The venv is made in its final place (venvs hold absolute paths), then
  # marked complete; a half-made one is made again next time.
  rm -rf "$cache"; mkdir -p "$cache"
  if "$base_python" -m venv "$cache/venv" >"$cache.tmp/log" 2>&1 &&
     "$cache/venv/bin/pip" install --quiet --disable-pip-version-check \
       "netbox==$version" "pynetbox==$pynetbox_version" >>"$cache.tmp/log" 2>&1; then
    touch "$cache/.complete"
    info "installed netbox $version and pynetbox $pynetbox_version into $cache in $(( $(date +%s) - started ))s"
  else
    bail "pip install netbox==$version" "$cache.tmp/log"
  fi
  rm -rf "$cache.tmp"
fi
got=$("$py" -m pip show netbox 2>/dev/null | sed -n 's/^Version: //p')
[ "$got" = "$version" ] || bail "the venv holds netbox '$got', not $version"
bin=$(tollgate_bin "$root") || exit 1
phase install

scratch=$(mktemp -d)
db=netbox_real_$$
tpl=tollgate_netbox_tpl_${version//./_}
cleanup_netbox() {
  cleanup
  psql -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
}
trap cleanup_netbox EXIT
trap 'exit 1' INT TERM
nb_port=$(free_port); gw_port=$(free_port); adm_port=$(free_port)
nb=http://127.0.0.1:$nb_port
gw=http://127.0.0.1:$gw_port
rnd() { "$py" -c "import secrets; print(secrets.token_urlsafe($1))"; }
pepper=$(rnd 48)

# --- NetBox's configuration: NETBOX_ROOT in the scratch directory ----------
# The gateway sends Host: 127.0.0.1:<port> (the upstream's authority) and
# the client's Host as X-Forwarded-Host; NetBox sets USE_X_FORWARDED_HOST,
# so Django checks the client's host name: ALLOWED_HOSTS must name the
# host the clients use (here 127.0.0.1).
mkdir -p "$scratch/nb/conf" "$scratch/nb/media"
umask 077
cat >"$scratch/nb/conf/configuration.py" <<CONF
import os
ALLOWED_HOSTS = ['127.0.0.1']
DATABASES = {'default': {
    'ENGINE': 'django.db.backends.postgresql',
    'NAME': os.environ['NETBOX_DB'], 'USER': '$PGUSER', 'PASSWORD': '',
    'HOST': '$PGHOST', 'PORT': '$PGPORT', 'CONN_MAX_AGE': 300,
}}
REDIS = {
    'tasks': {'HOST': '127.0.0.1', 'PORT': 6379, 'DATABASE': 6, 'SSL': False},
    'caching': {'HOST': '127.0.0.1', 'PORT': 6379, 'DATABASE': 7, 'SSL': False},
}
SECRET_KEY = os.environ['NETBOX_SECRET_KEY']
API_TOKEN_PEPPERS = {1: os.environ['NETBOX_API_TOKEN_PEPPER_1']}
DEBUG = False
CENSUS_REPORTING_ENABLED = False
RELEASE_CHECK_URL = None
CONF
umask 022
export NETBOX_ROOT=$scratch/nb
export NETBOX_SECRET_KEY
NETBOX_SECRET_KEY=$(rnd 60)
export NETBOX_API_TOKEN_PEPPER_1=$pepper
export NETBOX_TEST_PASSWORD
NETBOX_TEST_PASSWORD=$(rnd 18)
netbox() { "$cache/venv/bin/netbox" "$@"; }

# --- the database: a copy of the migrated template ------------------------
if ! psql -d postgres -qtAc "select 1 from pg_database where datname = '$tpl'" | grep -q 1; then
  started=$(date +%s)
  psql -d postgres -qc "DROP DATABASE IF EXISTS ${tpl}_tmp WITH (FORCE)" >/dev/null
  psql -d postgres -qc "CREATE DATABASE ${tpl}_tmp" >/dev/null || bail "create database ${tpl}_tmp"
  NETBOX_DB=${tpl}_tmp netbox migrate --no-input >"$scratch/migrate.log" 2>&1 ||
    bail "netbox migrate" "$scratch/migrate.log"
  # Only a fully migrated database becomes the template.
  psql -d postgres -qc "ALTER DATABASE ${tpl}_tmp RENAME TO $tpl" >/dev/null || bail "rename the template"
  info "migrated NetBox $version into template $tpl in $(( $(date +%s) - started ))s"
fi
psql -d postgres -qc "CREATE DATABASE $db TEMPLATE $tpl" >/dev/null || bail "create database $db from $tpl"
export NETBOX_DB=$db
redis-cli -h 127.0.0.1 -p 6379 -n 6 flushdb >/dev/null
redis-cli -h 127.0.0.1 -p 6379 -n 7 flushdb >/dev/null
phase database

# --- users and tokens, made by NetBox's models ------------------------------
"$py" "$root/tests/real/netbox-setup.py" "$scratch/tokens.json" >"$scratch/setup.log" 2>&1 ||
  bail "NetBox setup (users, tokens)" "$scratch/setup.log"
phase users-and-tokens

# --- NetBox under gunicorn, on 127.0.0.1 only -------------------------------
(cd "$scratch/nb" && exec "$cache/venv/bin/gunicorn" netbox.wsgi --bind "127.0.0.1:$nb_port" \
  --workers 2 --threads 3 --timeout 120 --access-logfile "$scratch/nb/gunicorn-access.log") \
  >"$scratch/gunicorn.log" 2>&1 &
pids+=($!)
wait_http "$nb/api/status/" 120 || bail "NetBox did not start" "$scratch/gunicorn.log"
phase netbox-start

# --- the gateway with the shipped preset: addresses and the database URL ---
cp "$root/config/examples/netbox.yaml" "$scratch/gateway.yaml"
export TOLLGATE_LISTEN=127.0.0.1:$gw_port TOLLGATE_ADMIN=127.0.0.1:$adm_port NETBOX_UPSTREAM=$nb
export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$db"
check "tollgate check passes on the preset over NetBox's database" "$bin" check -c "$scratch/gateway.yaml" >/dev/null 2>&1
"$bin" serve -c "$scratch/gateway.yaml" >"$scratch/access.log" 2>"$scratch/gateway.err" &
pids+=($!)
wait_ok "http://127.0.0.1:$adm_port/readyz" 30 || bail "gateway did not become ready" "$scratch/gateway.err"
phase gateway-start

# --- pynetbox through the gateway ------------------------------------------
GW=$gw NB=$nb ADMIN=http://127.0.0.1:$adm_port TOKENS=$scratch/tokens.json NB_ACCESS_LOG=$scratch/nb/gunicorn-access.log \
  "$py" "$root/tests/real/netbox-client.py" >"$scratch/client.out" 2>&1
cat "$scratch/client.out"
passed=$((passed + $(grep -c '^PASS: ' "$scratch/client.out")))
failed=$((failed + $(grep -c '^FAIL: ' "$scratch/client.out")))
grep -q '^DONE$' "$scratch/client.out" || fail "the pynetbox checks did not run to the end"
phase pynetbox-checks

# --- NetBox's other surfaces through the preset (curl) -----------------------
tok_admin=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"]["token"])' "$scratch/tokens.json")
id_admin=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"]["id"])' "$scratch/tokens.json")
auth=(-H "Authorization: Bearer $tok_admin")
check "/api/ with a token: 200" test "$(status GET "$gw/api/" "${auth[@]}")" = 200
check "/api/status/ without a token: missing_token" test "$(error_code "$gw/api/status/")" = missing_token
info "/api/status/ straight to NetBox without a token: $(status GET "$nb/api/status/")"
check "/api/schema/ without a token: missing_token" test "$(error_code "$gw/api/schema/")" = missing_token
info "/api/schema/ straight to NetBox without a token: $(status GET "$nb/api/schema/")"
check "/api/schema/swagger-ui/ with a token: 200" test "$(status GET "$gw/api/schema/swagger-ui/" "${auth[@]}")" = 200
info "/api/docs/ with a token: $(status GET "$gw/api/docs/" "${auth[@]}")"
for p in / /login/ /static/netbox.js /media/x.png /dcim/sites/ /admin/ /users/tokens/; do
  st=$(status GET "$gw$p" "${auth[@]}"); er=$(error_code "$gw$p" "${auth[@]}")
  info "$p through the gateway with a token: $st $er; straight to NetBox without one: $(status GET "$nb$p")"
done
check "the UI (/dcim/sites/) is not routed: no_route" test "$(error_code "$gw/dcim/sites/" "${auth[@]}")" = no_route
check "NetBox's login page (/login/) is not routed: no_route" test "$(error_code "$gw/login/" "${auth[@]}")" = no_route
# Host: the gateway sends the client's Host as X-Forwarded-Host, which
# NetBox (USE_X_FORWARDED_HOST) checks against ALLOWED_HOSTS.
check "a Host NetBox's ALLOWED_HOSTS does not name: NetBox answers 400" \
  test "$(status GET "$gw/api/" "${auth[@]}" -H 'Host: netbox.example.com')" = 400
hdr=$(curl -s -D - -o /dev/null "${auth[@]}" "$gw/api/status/" | tr -d '\r' | sed -n 's/^x-request-id: //Ip')
info "X-Request-ID answered without one sent: $hdr"
hdr2=$(curl -s -D - -o /dev/null "${auth[@]}" -H 'X-Request-Id: tollgate-probe-1' "$gw/api/status/" | tr -d '\r' | sed -n 's/^x-request-id: //Ip')
info "X-Request-ID answered when the client sent tollgate-probe-1: $hdr2"
phase surfaces

# --- the web UI in headless Chromium (the browser layer of docs/apps/netbox.md)
if command -v chromedriver >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1; then
  # NetBox serves no /static/ with DEBUG off: its collected files (cached by
  # version) are served by a plain file server on 127.0.0.1.
  if [ ! -e "$cache/static/.complete" ]; then
    rm -rf "$cache/static"; mkdir -p "$cache/static"
    ln -sfn "$cache/static" "$scratch/nb/static"
    netbox collectstatic --no-input >"$scratch/collectstatic.log" 2>&1 && touch "$cache/static/.complete" ||
      fail "netbox collectstatic"
  fi
  ln -sfn "$cache/static" "$scratch/nb/static"
  st_port=$(free_port); ui_port=$(free_port); ui_adm_port=$(free_port)
  "$py" -m http.server --bind 127.0.0.1 --directory "$cache/static" "$st_port" >"$scratch/static.log" 2>&1 &
  pids+=($!)
  # The shipped preset plus the browser routes and sessions, on other ports.
  sed -e "s|\${TOLLGATE_LISTEN:-0.0.0.0:8080}|127.0.0.1:$ui_port|" -e "s|\${TOLLGATE_ADMIN:-127.0.0.1:9901}|127.0.0.1:$ui_adm_port|" \
    "$root/config/examples/netbox.yaml" >"$scratch/gateway-ui.yaml"
  cat >>"$scratch/gateway-ui.yaml" <<YAML
  - prefix: /
    upstream: \${NETBOX_UPSTREAM}
    scopes: [scope:netbox]
    browser: true
  - prefix: /static
    upstream: http://127.0.0.1:$st_port
    strip_prefix: true
    scopes: [scope:netbox]
    anonymous: read

sessions:
  secret: \${TOLLGATE_SESSION_SECRET}
  lifetime: 1h
YAML
  TOLLGATE_SESSION_SECRET=$(rnd 32) "$bin" serve -c "$scratch/gateway-ui.yaml" >"$scratch/access-ui.log" 2>"$scratch/gateway-ui.err" &
  pids+=($!)
  if wait_ok "http://127.0.0.1:$ui_adm_port/readyz" 30 && wait_http "http://127.0.0.1:$st_port/" 10; then
    GW=http://127.0.0.1:$ui_port TOKEN=$tok_admin timeout 240 "$py" "$root/tests/real/netbox-browser.py" >"$scratch/browser.out" 2>&1
    cat "$scratch/browser.out"
    passed=$((passed + $(grep -c '^PASS: ' "$scratch/browser.out")))
    failed=$((failed + $(grep -c '^FAIL: ' "$scratch/browser.out")))
    grep -q '^DONE$' "$scratch/browser.out" || { fail "the browser checks did not run to the end"; tail -n 5 "$scratch/browser.out"; }
  else
    fail "the UI gateway did not start"; tail -n 5 "$scratch/gateway-ui.err"
  fi
  phase browser
else
  info "no chromium and chromedriver: the browser checks are skipped (apt-get install chromium chromium-driver)"
fi

check "the access log names tokens by id (nb-$id_admin), never the secret" \
  bash -c "grep -q '\"token_id\":\"nb-$id_admin\"' '$scratch/access.log' && ! grep -qF -- '${tok_admin#*.}' '$scratch'/access*.log"
check "the pepper is in no log" bash -c "! grep -qF -- '$pepper' '$scratch'/access*.log '$scratch'/gateway*.err '$scratch/gunicorn.log'"
info "total run time: $(( $(date +%s) - run_started ))s"
finish
