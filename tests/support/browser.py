"""A real, headless chromium driven over the DevTools protocol, for tests.

The protocol goes over a pipe (--remote-debugging-pipe: fd 3 into the
browser, fd 4 out of it, messages separated by NUL bytes), so nothing but
the Debian chromium package and the Python standard library is needed: no
npm, no websocket client, no port to pick."""
import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(Exception):
    pass


class Browser:
    def __init__(self, log_path, timeout=20.0):
        if not CHROMIUM:
            raise BrowserError("chromium not installed")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="od-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds():
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        argv = [CHROMIUM, "--headless=new", "--remote-debugging-pipe", "--user-data-dir=" + self.profile,
                "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--disable-component-update",
                "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--disable-dev-shm-usage",
                "--password-store=basic", "--use-mock-keychain", "--no-proxy-server"]
        if os.geteuid() == 0:
            argv.append("--no-sandbox")
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv + ["about:blank"], stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=child_fds, pass_fds=(3, 4),
                                     start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._replies = {}
        self._events = queue.Queue()
        self._listeners = []
        threading.Thread(target=self._read, daemon=True).start()
        self.call("Browser.getVersion")

    # --- the protocol -------------------------------------------------------

    def _read(self):
        buf = b""
        while True:
            try:
                data = os.read(self._from_browser, 65536)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        slot = self._replies.get(msg["id"])
                    if slot is not None:
                        slot.put(msg)
                else:
                    for listener in list(self._listeners):
                        listener(msg)
        with self._lock:
            for slot in self._replies.values():
                slot.put({"error": {"message": "chromium went away"}})

    def call(self, method, session=None, timeout=None, **params):
        with self._lock:
            self._next_id += 1
            mid = self._next_id
            slot = queue.Queue()
            self._replies[mid] = slot
        msg = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        try:
            reply = slot.get(timeout=timeout or self.timeout)
        except queue.Empty:
            raise BrowserError("%s: no answer from chromium" % method)
        finally:
            with self._lock:
                self._replies.pop(mid, None)
        if "error" in reply:
            raise BrowserError("%s: %s" % (method, reply["error"].get("message")))
        return reply.get("result", {})

    def page(self, width=1280, height=800, dark=False, javascript=True):
        return Page(self, width, height, dark, javascript)

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except BrowserError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """One tab, with its viewport and colour scheme."""

    def __init__(self, browser, width, height, dark, javascript):
        self.browser = browser
        self.loads = []  # (time, url) of each document the tab loaded
        self.target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = browser.call("Target.attachToTarget", targetId=self.target, flatten=True)["sessionId"]
        browser._listeners.append(self._on_event)
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=width < 600)
        self.call("Emulation.setEmulatedMedia", features=[
            {"name": "prefers-color-scheme", "value": "dark" if dark else "light"},
            {"name": "prefers-reduced-motion", "value": "reduce"}])
        if not javascript:
            self.call("Emulation.setScriptExecutionDisabled", value=True)

    def _on_event(self, msg):
        if msg.get("sessionId") != self.session:
            return
        if msg.get("method") == "Page.frameNavigated" and not msg["params"]["frame"].get("parentId"):
            self.loads.append((time.time(), msg["params"]["frame"]["url"]))

    def call(self, method, **params):
        return self.browser.call(method, session=self.session, **params)

    def goto(self, url):
        self.call("Page.navigate", url=url)

    def js(self, expression):
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise BrowserError("%s: %s" % (expression, reply["exceptionDetails"].get("text")))
        return reply.get("result", {}).get("value")

    def text(self):
        try:
            return self.js("document.body ? document.body.innerText : ''") or ""
        except BrowserError:
            return ""  # between two documents

    def title(self):
        try:
            return self.js("document.title") or ""
        except BrowserError:
            return ""

    def wait_for(self, predicate, timeout=20.0, message="condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.05)
        raise AssertionError("%s not reached within %.0f s; the page says %r" % (message, timeout, self.text()[:400]))

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.browser._listeners.remove(self._on_event)
            self.browser.call("Target.closeTarget", targetId=self.target)
        except (BrowserError, ValueError):
            pass
