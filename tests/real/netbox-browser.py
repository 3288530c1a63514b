"""NetBox's web UI in headless Chromium through the gateway, for
tests/real/netbox.sh: the gateway's login page (a NetBox token), then
NetBox's own login page (user name and password), then the dashboard.

Env: GW (a gateway with sessions and NetBox's UI routes), TOKEN (a NetBox
token to sign in to the gateway with), NETBOX_TEST_PASSWORD (admin's NetBox
password). Drives Chromium over WebDriver with the standard library, as
tests/browser/login.py does. Prints PASS:/FAIL:/INFO: lines and DONE.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("login", os.path.join(here, "..", "browser", "login.py"))
login = importlib.util.module_from_spec(spec)
spec.loader.exec_module(login)

GW = os.environ["GW"]
TOKEN = os.environ["TOKEN"]
PASSWORD = os.environ["NETBOX_TEST_PASSWORD"]


def out(kind, msg):
    print(f"{kind}: {msg}", flush=True)


def until(check, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = check()
        except Exception:  # the page is still loading
            value = None
        if value:
            return value
        time.sleep(0.2)
    return None


def check(name, ok):
    out("PASS" if ok else "FAIL", name)


port = login.free_port()
chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
driver = subprocess.Popen([chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
browser = None
try:
    login.wait_port(port, "chromedriver")
    browser = login.WebDriver(port)
    browser.go(GW + "/dcim/sites/")
    url = until(lambda: "/.tollgate/login" in browser.url() and browser.url())
    check(f"the UI without a session goes to the gateway's login page ({url and url.replace(GW, '')})", bool(url))
    browser.type("#token", TOKEN)
    browser.click("button[type=submit]")
    url = until(lambda: "/login/" in browser.url() and browser.url())
    check(f"signed in to the gateway with a NetBox token; NetBox's own login page next ({url and url.replace(GW, '')})", bool(url))
    css = until(lambda: "rgb(" in (browser.s("POST", "/execute/sync", {
        "script": "return getComputedStyle(document.body).backgroundColor", "args": []}) or ""))
    sheets = browser.s("POST", "/execute/sync", {"script": "return document.styleSheets.length", "args": []})
    href = browser.s("POST", "/execute/sync", {
        "script": "return document.querySelector('link[rel=stylesheet]').href", "args": []})
    with urllib.request.urlopen(href, timeout=30) as r:  # no cookie: an anonymous read
        body = r.read()
    check(f"NetBox's stylesheets load through the anonymous /static route ({sheets} sheets; "
          f"{href.replace(GW, '')}: {len(body)} bytes without a session)", bool(css) and sheets > 0 and len(body) > 1000)
    browser.type("#id_username", "admin")
    browser.type("#id_password", PASSWORD)
    browser.click("button[type=submit]")
    url = until(lambda: "/dcim/sites/" in browser.url() and browser.url())
    check(f"NetBox's login form POST through the gateway (same-origin, Django CSRF) lands on {url and url.replace(GW, '')}", bool(url))
    title = until(lambda: "Sites" in browser.s("GET", "/title") and browser.s("GET", "/title"))
    check(f"the sites page renders (title {title!r})", bool(title))
    browser.go(GW + "/")
    dash = until(lambda: "admin" in browser.s("GET", "/source") and browser.s("GET", "/title"))
    check(f"the dashboard loads, signed in as admin (title {dash!r})", bool(dash))
    names = [c["name"] for c in browser.cookies()]
    check(f"the browser holds the gateway's session and NetBox's own ({', '.join(sorted(names))})",
          "tollgate_session" in names and "sessionid" in names)
    page = browser.s("GET", "/source")
    check("the token appears nowhere in the pages", TOKEN.split(".", 1)[-1] not in page)
    # Without the gateway's session, NetBox's cookie alone gets nowhere.
    sid = [c["value"] for c in browser.cookies() if c["name"] == "sessionid"][0]
    req = urllib.request.Request(GW + "/dcim/sites/", headers={"Cookie": f"sessionid={sid}"})
    try:
        code = urllib.request.urlopen(req, timeout=30).status
    except urllib.error.HTTPError as e:
        code = e.code
    check(f"NetBox's session cookie without the gateway's: {code} (refused)", code == 401)
finally:
    if browser:
        browser.quit()
    driver.terminate()
    driver.wait()
print("DONE", flush=True)
sys.exit(0)
