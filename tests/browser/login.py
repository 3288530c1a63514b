#!/usr/bin/env python3
"""Browser sessions in a real browser: headless Chromium through Tollgate.

The scenario (the contract, §7.4): Chromium opens an application page behind the
gateway, is sent to the login form, signs in with a token, lands back on
the page, and the page's own fetch() of the API behind the same gateway
succeeds with the session cookie; the upstream saw the token id and never
the session cookie. Screenshots go to target/browser-artifacts/.

Drives Chromium with WebDriver (chromedriver) over plain HTTP, standard
library only. Usage: tests/browser/login.py [path/to/tollgate]
"""

import hashlib
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(ROOT, "target", "browser-artifacts")

APP_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Demo dashboard</title>
<style>body{font:16px system-ui,sans-serif;margin:3rem}#result{padding:1rem;background:#eef6ee;border-radius:8px}</style>
</head><body>
<h1>Demo dashboard</h1>
<p>Data from <code>/api/v1/data</code>, fetched by this page:</p>
<pre id="result">loading...</pre>
<script>
fetch('/api/v1/data', {headers: {'Accept': 'application/json'}})
  .then(r => r.text().then(t => { document.getElementById('result').textContent = r.status + ' ' + t; }))
  .catch(e => { document.getElementById('result').textContent = 'failed: ' + e; });
</script>
</body></html>
"""

seen = []


class App(http.server.BaseHTTPRequestHandler):
    """The upstream application: a page and its API."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
        if self.path.startswith("/api/v1/data"):
            body = json.dumps(
                {"points": [1, 2, 3], "token_id": self.headers.get("X-Tollgate-Token-Id")}
            ).encode()
            ctype = "application/json"
        else:
            body, ctype = APP_PAGE, "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port}")


class WebDriverError(Exception):
    """A WebDriver command that failed, e.g. an element not (yet) on the page."""


class WebDriver:
    """Just enough of the W3C WebDriver protocol."""

    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"
        # Debian's /usr/bin/chromium is a wrapper script; WebDriver wants the binary.
        chrome = "/usr/lib/chromium/chromium"
        if not os.path.exists(chrome):
            chrome = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chrome,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--window-size=1100,760",
                        ],
                    },
                }
            }
        }
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r).get("value")
        except urllib.error.HTTPError as e:
            raise WebDriverError(f"WebDriver {method} {path}: {e.code} {e.read().decode()[:500]}") from None

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def url(self):
        return self.s("GET", "/url")

    def find(self, css):
        el = self.s("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(el.values()))

    def type(self, css, text):
        self.s("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css):
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def text(self, css):
        return self.s("GET", f"/element/{self.find(css)}/text")

    def cookies(self):
        return self.s("GET", "/cookie")

    def screenshot(self, name):
        import base64

        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, name)
        with open(path, "wb") as f:
            f.write(base64.b64decode(self.s("GET", "/screenshot")))
        print(f"screenshot: {os.path.relpath(path, ROOT)}")

    def quit(self):
        try:
            self.s("DELETE", "")
        except SystemExit:
            pass


def until(what, check, timeout=15):
    """Polls `check` until it is truthy. While the browser is still between
    pages, the element asked for may not exist yet: that is retried too."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            value = check()
        except WebDriverError as e:
            value, last = None, e
        if value:
            return value
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}" + (f" (last: {last})" if last else ""))


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/tollgate"))
    token = "tg_browser_" + secrets.token_hex(16)
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    up = app.server_address[1]
    gw_port = free_port()
    scratch = tempfile.mkdtemp(prefix="tollgate-browser-")
    with open(os.path.join(scratch, "tokens.yaml"), "w") as f:
        f.write(
            "tokens:\n  - id: browser-user\n"
            f"    sha256: {hashlib.sha256(token.encode()).hexdigest()}\n"
            "    scopes: [scope:agent-ui]\n"
        )
    with open(os.path.join(scratch, "gateway.yaml"), "w") as f:
        f.write(
            f"listen:\n  - addr: 127.0.0.1:{gw_port}\n"
            "log:\n  level: warn\n"
            "tokens:\n  source: file\n  path: tokens.yaml\n"
            "sessions:\n  secret: ${TOLLGATE_SESSION_SECRET}\n"
            "routes:\n"
            f"  - prefix: /app\n    upstream: http://127.0.0.1:{up}\n    scopes: [scope:agent-ui]\n    browser: true\n"
            f"  - prefix: /api/v1\n    upstream: http://127.0.0.1:{up}\n    scopes: [scope:agent-ui]\n    browser: true\n"
        )
    env = dict(os.environ, TOLLGATE_SESSION_SECRET=secrets.token_urlsafe(32))
    gw = subprocess.Popen(
        [binary, "serve", "-c", os.path.join(scratch, "gateway.yaml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    driver_port = free_port()
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = subprocess.Popen(
        [chromedriver, f"--port={driver_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    browser = None
    try:
        wait_port(gw_port, "tollgate")
        wait_port(driver_port, "chromedriver")
        browser = WebDriver(driver_port)
        base = f"http://127.0.0.1:{gw_port}"

        browser.go(base + "/app/dashboard")
        url = until("the login page", lambda: "/.tollgate/login" in browser.url() and browser.url())
        assert url == base + "/.tollgate/login?next=/app/dashboard", url
        assert browser.find("label[for=token]")
        browser.screenshot("login-form.png")

        # A wrong token first: the form again, with an error, without the token.
        browser.type("#token", "tg_not-the-right-one")
        browser.click("button[type=submit]")
        until("the error message", lambda: "not valid" in browser.text("#error"))
        page = browser.s("GET", "/source")
        assert "tg_not-the-right-one" not in page
        browser.screenshot("login-failed.png")

        browser.type("#token", token)
        browser.click("button[type=submit]")
        until("the page", lambda: browser.url() == base + "/app/dashboard")
        result = until("the page's fetch", lambda: (t := browser.text("#result")).startswith("200") and t)
        assert '"token_id": "browser-user"' in result, result
        browser.screenshot("signed-in.png")

        cookies = browser.cookies()
        session = [c for c in cookies if c["name"] == "tollgate_session"]
        assert session and session[0]["httpOnly"] and session[0].get("sameSite") == "Lax", cookies
        api = [r for r in seen if r["path"].startswith("/api/v1/data")]
        assert api, seen
        assert api[-1]["headers"].get("x-tollgate-token-id") == "browser-user", api[-1]
        for r in seen:
            assert "tollgate_session" not in r["headers"].get("cookie", ""), r
        assert token not in json.dumps(seen)
        print("ok: signed in through the login form; the page's fetch() reached the API as browser-user")
    finally:
        if browser:
            browser.quit()
        driver.terminate()
        gw.terminate()
        driver.wait()
        gw.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
