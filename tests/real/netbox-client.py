"""pynetbox through the gateway, for tests/real/netbox.sh.

Env: GW (the gateway), NB (NetBox itself, for setup and for checking what
reached it), TOKENS (the JSON file netbox-setup.py wrote). Prints PASS:/FAIL:/
INFO: lines and DONE at the end; never prints a token.
"""

import json
import os
import time
import traceback

import pynetbox
import requests

GW = os.environ["GW"]
NB = os.environ["NB"]
T = json.load(open(os.environ["TOKENS"]))
REFRESH_S = 5  # refresh_interval in config/examples/netbox.yaml


def out(kind, msg):
    print(f"{kind}: {msg}", flush=True)


def check(name, fn):
    try:
        ok = fn()
    except Exception as e:  # a check that raised has failed
        ok = False
        out("INFO", f"{name}: {type(e).__name__}: {str(e)[:300]}")
    out("PASS" if ok else "FAIL", name)
    return ok


def refused(fn):
    """(status, gateway error field) of a call that must raise RequestError."""
    try:
        fn()
    except pynetbox.RequestError as e:
        try:
            body = e.req.json()
        except ValueError:
            body = {}
        return e.req.status_code, body.get("error") if isinstance(body, dict) else None
    return None, None


def gw_api(name):
    return pynetbox.api(GW, token=T[name]["token"])


admin = gw_api("admin")
reader = gw_api("reader")
direct = pynetbox.api(NB, token=T["admin"]["token"])  # NetBox itself, no gateway

# --- the v2 write token -------------------------------------------------------
sent = {}


def status_v2():
    # pynetbox picks the scheme from the token's shape: Bearer for nbt_<key>.<secret>.
    s = admin.http_session

    def hook(r, *a, **k):
        sent.setdefault("auth", r.request.headers.get("Authorization", "").split(" ")[0])

    s.hooks["response"].append(hook)
    try:
        st = admin.status()
    finally:
        s.hooks["response"].remove(hook)
    return st.get("netbox-version", "").startswith("4.7") and sent.get("auth") == "Bearer"


check("v2 write token: nb.status() through the gateway (pynetbox sent Bearer nbt_...)", status_v2)
check("v2 write token: nb.dcim.sites.all() lists", lambda: isinstance(list(admin.dcim.sites.all()), list))
site_slug = f"tollgate-{os.getpid()}"
created = {}


def create_site():
    s = admin.dcim.sites.create(name=f"Tollgate {os.getpid()}", slug=site_slug, status="active")
    created["id"] = s.id
    return s.id > 0


check("v2 write token: nb.dcim.sites.create() through the gateway", create_site)
check("the site exists in NetBox (read directly, not through the gateway)",
      lambda: direct.dcim.sites.get(slug=site_slug) is not None)
check("v2 write token: the site is updated through the gateway",
      lambda: admin.dcim.sites.get(slug=site_slug).update({"description": "via tollgate"})
      and direct.dcim.sites.get(slug=site_slug).description == "via tollgate")

exp_early = time.time() - T["expiring"]["made"]
check(f"the expiring token works before its expiry ({exp_early:.0f} s after it was made)",
      lambda: exp_early < T["expiring"]["expires_s"] and gw_api("expiring").status()["netbox-version"].startswith("4.7"))

# --- v1 token ----------------------------------------------------------------
if "v1" in T:
    v1 = gw_api("v1")
    check("v1 token (Token <40 hex>): nb.status() and sites.get() through the gateway",
          lambda: v1.status()["netbox-version"].startswith("4.7") and v1.dcim.sites.get(slug=site_slug) is not None)
else:
    out("INFO", f"NetBox made no v1 token: {T.get('v1_error')}")

# --- the read-only v2 token ---------------------------------------------------
check("read-only v2 token: sites.all() lists the new site",
      lambda: any(s.slug == site_slug for s in reader.dcim.sites.all()))
code, err = refused(lambda: reader.dcim.sites.create(name="ro", slug=f"ro-{os.getpid()}", status="active"))
check(f"read-only v2 token: sites.create() refused by the gateway: {code} {err}", lambda: (code, err) == (403, "read_only_token"))
check("...and no such site reached NetBox", lambda: direct.dcim.sites.get(slug=f"ro-{os.getpid()}") is None)
code, err = refused(lambda: reader.dcim.sites.get(slug=site_slug).delete())
check(f"read-only v2 token: site.delete() refused by the gateway: {code} {err}", lambda: (code, err) == (403, "read_only_token"))


def graphql(token, query):
    return requests.post(f"{GW}/graphql/", json={"query": query}, timeout=60,
                         headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})


def gql_reader():
    r = graphql(T["reader"]["token"], '{ site_list { name slug } }')
    return r.status_code == 200 and any(s["slug"] == site_slug for s in r.json()["data"]["site_list"])


check("read-only v2 token: GraphQL POST /graphql/ query -> 200 with the site", gql_reader)
r = requests.post(f"{GW}/graphql/", json={"query": "{ site_list { name } }"}, timeout=30)
check(f"GraphQL without a token: {r.status_code} missing_token",
      lambda: r.status_code == 401 and r.json().get("error") == "missing_token")

# --- the OpenAPI schema ------------------------------------------------------
# pynetbox's openapi() sends no token (it builds a Request without one), so
# through the gateway it needs the token on the session.


def openapi_session():
    nb = pynetbox.api(GW, token=T["reader"]["token"])
    nb.http_session.headers["Authorization"] = f"Bearer {T['reader']['token']}"
    spec = nb.openapi()
    return spec.get("openapi", "").startswith("3") and "/api/dcim/sites/" in spec["paths"]


code, err = refused(lambda: gw_api("reader").openapi())
out("INFO", f"nb.openapi() as pynetbox sends it (no token): gateway answers {code} {err}")
check("nb.openapi() (GET /api/schema/) with the token on the session: the spec lists /api/dcim/sites/", openapi_session)

# --- refusals ------------------------------------------------------------------
key, secret = T["admin"]["token"].split(".", 1)
wrong_secret = key + "." + ("A" if secret[0] != "A" else "B") + secret[1:]
for label, tok in (("an unknown v2 token", "nbt_AAAAAAAAAAAA.0123456789abcdefghij0123456789abcdefghij"),
                   ("a v2 token with a wrong secret", wrong_secret),
                   ("an unknown v1 token", "0123456789abcdef0123456789abcdef01234567")):
    code, err = refused(lambda: pynetbox.api(GW, token=tok).dcim.sites.count())
    check(f"{label}: {code} {err} from the gateway", lambda: (code, err) == (401, "invalid_token"))


def not_forwarded():
    marker = f"{time.time_ns()}"
    requests.get(f"{GW}/api/dcim/sites/?limit=1&marker={marker}", timeout=30,
                 headers={"Authorization": f"Bearer {wrong_secret}"})
    time.sleep(0.3)
    return marker not in open(os.environ["NB_ACCESS_LOG"]).read()


if os.environ.get("NB_ACCESS_LOG"):
    check("a refused request never reaches NetBox (not in gunicorn's access log)", not_forwarded)
    # the control: a good request does reach it
    marker = f"ok{time.time_ns()}"
    requests.get(f"{GW}/api/dcim/sites/?limit=1&marker={marker}", timeout=30,
                 headers={"Authorization": f"Bearer {T['admin']['token']}"})
    time.sleep(0.3)
    check("...while an accepted one does", lambda: marker in open(os.environ["NB_ACCESS_LOG"]).read())


# --- allowed_ips and expiry, as NetBox stores them --------------------------
code, err = refused(lambda: gw_api("elsewhere").dcim.sites.count())
check(f"a token whose allowed_ips exclude 127.0.0.1: {code} {err} from the gateway",
      lambda: (code, err) == (403, "ip_not_allowed"))
code, _ = refused(lambda: pynetbox.api(NB, token=T["elsewhere"]["token"]).dcim.sites.count())
out("INFO", f"the same token straight to NetBox: {code}")


# --- a token made in NetBox's REST API reaches the gateway ------------------
def until_status(token, want, limit_s):
    """ms until the gateway answers want for token (poll every 50 ms), or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        r = requests.get(f"{GW}/api/status/", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        if r.status_code == want and (want == 200 or r.json().get("error") == "invalid_token"):
            return int((time.monotonic() - t0) * 1000)
        time.sleep(0.05)
    return None


def tokens_loaded():
    for line in requests.get(f"{os.environ['ADMIN']}/metrics", timeout=10).text.splitlines():
        if line.startswith("tollgate_tokens_loaded "):
            return float(line.split()[1])
    return None


# Polling the gateway with the new token until it passes would be answered
# invalid_token until the next refresh, and every such answer counts against
# limits.failed_auth_per_ip (20 a minute): polling every 50 ms locks the
# client's address out within a second. So the test watches the gateway's
# tollgate_tokens_loaded instead, then sends the token once.
me = direct.users.users.get(username="admin")
before = tokens_loaded()
t0 = time.monotonic()
made = direct.users.tokens.create(user=me.id, description="made over the REST API", write_enabled=False)
new_token = f"nbt_{made.key}.{made.token}"
ms = None
while time.monotonic() - t0 < REFRESH_S + 10:
    if tokens_loaded() > before:
        ms = int((time.monotonic() - t0) * 1000)
        break
    time.sleep(0.05)
out("INFO", f"token made in NetBox (REST API): loaded by the gateway after {ms} ms")
check(f"a token made with NetBox's REST API is loaded within refresh_interval + 2 s ({ms} ms) and then accepted",
      lambda: ms is not None and ms < (REFRESH_S + 2) * 1000
      and pynetbox.api(GW, token=new_token).status()["netbox-version"].startswith("4.7"))
code, err = refused(lambda: pynetbox.api(GW, token=new_token).dcim.sites.create(name="x", slug="x-ro", status="active"))
check(f"...and it is read-only at the gateway (write_enabled false): {code} {err}", lambda: (code, err) == (403, "read_only_token"))

# --- revocation and deactivation in NetBox reach the gateway ------------------
def until_refused(token, limit_s):
    """ms until the gateway answers 401 invalid_token for token (poll every 50 ms)."""
    return until_status(token, 401, limit_s)


rv = gw_api("revoke")
check("the token to revoke works before", lambda: rv.status()["netbox-version"].startswith("4.7"))
direct.users.tokens.get(T["revoke"]["id"]).delete()
ms = until_refused(T["revoke"]["token"], REFRESH_S + 10)
out("INFO", f"token deleted in NetBox (REST API): refused by the gateway after {ms} ms")
# The preset's notify_trigger_on: users_token announces the deletion at once.
check(f"a token deleted in NetBox is refused within 1 s, by the trigger on users_token ({ms} ms)",
      lambda: ms is not None and ms < 1000)

ct = gw_api("contractor")
check("the contractor's token works before", lambda: len(list(ct.dcim.sites.filter(slug=site_slug))) == 1)
direct.users.users.get(username="contractor").update({"is_active": False})
ms = until_refused(T["contractor"]["token"], REFRESH_S + 10)
out("INFO", f"user deactivated in NetBox: token refused by the gateway after {ms} ms")
check(f"a deactivated user's token is refused within refresh_interval + 2 s ({ms} ms)",
      lambda: ms is not None and ms < (REFRESH_S + 2) * 1000)

# --- disabled token (enabled = false) --------------------------------------
tok = direct.users.tokens.get(T["reader"]["id"])
tok.update({"enabled": False})
ms = until_refused(T["reader"]["token"], REFRESH_S + 10)
out("INFO", f"token disabled in NetBox: refused by the gateway after {ms} ms")
check(f"a disabled token (enabled = false) is refused within 1 s, by the trigger ({ms} ms)",
      lambda: ms is not None and ms < 1000)

# --- the expiring token: its expiry has passed ---------------------------------
exp = T["expiring"]
time.sleep(max(0.0, exp["made"] + exp["expires_s"] + 1 - time.time()))
r = requests.get(f"{GW}/api/status/", headers={"Authorization": f"Bearer {exp['token']}"}, timeout=10)
elapsed = time.time() - exp["made"]
check(f"a token past its NetBox expiry ({elapsed:.0f} s after it was made, {exp['expires_s']} s allowed): {r.status_code} invalid_token",
      lambda: elapsed > exp["expires_s"] and r.status_code == 401 and r.json().get("error") == "invalid_token")

print("DONE", flush=True)
