"""The pages in a real browser: Debian's chromium, headless, in front of real
nginx with the module, real controld and real sample services. A page
opened while the service is cold turns into the service's own page within
a second of it being warm, without reloading in a loop; a failed start
shows its reason and tries again when the back-off ends; the pages fit a
phone and follow dark mode; without JavaScript they reload themselves.

ONDEMAND_SCREENSHOTS=DIR also saves the pages at 1280 and 390 px, light and
dark, into DIR (scripts/screenshots makes docs/pages/ that way)."""
import json
import os
import shlex
import time
import unittest

from module_case import ModuleTestCase
from harness import PYTHON, SAMPLE_SERVICE, free_port, wait_until

try:
    from browser import CHROMIUM, Browser
except ImportError:  # pragma: no cover
    CHROMIUM = None

EVENTS = "/_ondemand/events"
STATUS = "/_ondemand"
SHOTS = os.environ.get("ONDEMAND_SCREENSHOTS", "")
# Colour of the page behind the card, as the browser computes it.
LIGHT_BG = "rgb(244, 245, 247)"
DARK_BG = "rgb(14, 16, 20)"


@unittest.skipUnless(CHROMIUM, "chromium is not installed (scripts/install-deps installs it)")
class BrowserTest(ModuleTestCase):

    def setUp(self):
        super().setUp()
        self.browser = Browser(self.path("chromium.log"))
        self.addCleanup(self.browser.close)

    def page(self, **kw):
        p = self.browser.page(**kw)
        self.addCleanup(p.close)
        return p

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def front(self, services):
        """nginx with a location per service (/NAME/ goes to NAME), the
        events and the status page."""
        locations = "location = %s { ondemand_events; }\n" % EVENTS
        for name, port in services:
            locations += "location /%s/ { ondemand_service %s; proxy_pass http://127.0.0.1:%d; }\n" % (
                name, name, port)
        self.start_front(locations)

    def adjustable_sample(self, name, port, extra=""):
        """A sample service whose start takes as long as the file
        NAME.ready says, read at each start."""
        ready = self.path("%s.ready" % name)
        with open(ready, "w") as f:
            f.write("0")
        start, stop = self.sample_commands(name, port)
        i = start.index("--ready-after")
        start[i + 1] = "READY"
        command = " ".join(shlex.quote(a) for a in start).replace("READY", '"$(cat %s)"' % shlex.quote(ready))
        return self.sample_yaml(name, port, start=["sh", "-c", command], stop=stop, extra=extra), ready

    @staticmethod
    def set_ready(path, seconds):
        with open(path, "w") as f:
            f.write(str(seconds))

    def warm_at(self, service):
        warm = [h for h in self.history(service) if h["to"] == "warm"]
        return warm[-1]["at"] / 1000.0 if warm else None

    def shot(self, page, name):
        if SHOTS:
            os.makedirs(SHOTS, exist_ok=True)
            page.screenshot(os.path.join(SHOTS, name + ".png"))

    # --- the stories ---------------------------------------------------------

    def test_a_page_opened_while_cold_becomes_the_service_within_a_second_of_it_being_warm(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("notes", port, ready_after=3.0)])
        self.front([("notes", port)])
        page = self.page()
        page.goto(self.url("/notes/hello"))
        page.wait_for(lambda: page.title() == "notes is starting", 10, "the waiting page")
        text = page.wait_for(lambda: "Starting for" in page.text() and page.text(), 10, "the start's elapsed time")
        self.assertIn("The first start", text)
        page.wait_for(lambda: "hello from notes" in page.text(), 30, "the service's own page")
        warm_at = self.warm_at("notes")
        self.assertIsNotNone(warm_at)
        # One waiting page and then the service: no reload loop in between.
        self.assertEqual(len(page.loads), 2, page.loads)
        self.assertLess(page.loads[1][0] - warm_at, 1.0, "the page moved on within 1 s of warm")
        self.assertGreater(page.loads[1][0], warm_at - 0.05, "and not before")

    def test_the_failed_page_shows_the_reason_and_tries_again_when_the_backoff_ends(self):
        reason = "CUDA error: out of memory (GPU 0: 23.4 of 24 GiB in use)"
        self.start_controld_with([self.sample_yaml(
            "notes", start=["sh", "-c", "sleep 0.5; echo %s >&2; exit 1" % shlex.quote(reason)],
            extra="    failure_backoff: 4s\n")])
        self.front([("notes", free_port())])
        page = self.page()
        page.goto(self.url("/notes/"))
        page.wait_for(lambda: page.title() == "notes failed to start", 15, "the failed page")
        text = page.text()
        self.assertIn(reason, text)
        self.assertEqual(text.count("CUDA error"), 1, "the reason once")
        self.assertRegex(text, r"A new try starts in [1-4] s\.")
        failed_at = [h for h in self.history("notes") if h["to"] == "failed"][0]["at"] / 1000.0
        # The page waits out the back-off, then its reload is a new request
        # that starts the service again.
        wait_until(lambda: len([h for h in self.history("notes") if h["to"] == "starting"]) >= 2, 15,
                   message="a second start, from the page")
        second = [h for h in self.history("notes") if h["to"] == "starting"][1]["at"] / 1000.0
        self.assertGreater(second - failed_at, 3.5, "not before the back-off ended")
        self.assertLess(second - failed_at, 7.0, "soon after it")
        page.wait_for(lambda: page.title() == "notes failed to start" and len(page.loads) >= 3, 15,
                      "the failed page again after the second start")
        self.assertLessEqual(len(page.loads), 4, "no reload loop: %r" % page.loads)

    def test_without_javascript_the_page_reloads_itself_until_the_service_is_warm(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("notes", port, ready_after=2.0)])
        self.front([("notes", port)])
        page = self.page(javascript=False)
        page.goto(self.url("/notes/hello"))
        page.wait_for(lambda: page.title() == "notes is starting", 10, "the waiting page")
        self.assertIn("This page reloads every 3 s.", page.text())
        page.wait_for(lambda: "hello from notes" in page.text(), 30, "the service's own page")
        self.assertGreaterEqual(len(page.loads), 2)

    def test_the_pages_fit_a_phone_and_follow_dark_mode(self):
        ports = {name: free_port() for name in ("comfyui", "ollama", "sdxl", "embeddings")}
        comfy, comfy_ready = self.adjustable_sample("comfyui", ports["comfyui"])
        self.start_controld_with([
            comfy,
            self.sample_yaml("ollama", ports["ollama"]),
            self.sample_yaml("sdxl", start=["sh", "-c", "echo 'CUDA error: out of memory (GPU 0: 23.4 of 24 GiB "
                                                        "in use by comfyui)' >&2; exit 1"],
                             extra="    failure_backoff: 10m\n"),
            self.sample_yaml("embeddings", ports["embeddings"]),
        ])
        self.front(list(ports.items()))
        # A start that took 2 s, then one that takes long: the waiting page
        # has a last start to measure against.
        self.set_ready(comfy_ready, 12 if SHOTS else 2)
        self.cli_ok("start", "comfyui")
        self.wait_state("comfyui", "warm", 30)
        self.cli_ok("stop", "comfyui", "--wait")
        self.set_ready(comfy_ready, 120)
        self.cli_ok("start", "ollama", "--wait")
        self.cli("start", "sdxl", "--wait")
        self.cli_ok("start", "comfyui")
        wait_until(lambda: self.front_service("comfyui").get("state") == "starting", 10)
        time.sleep(1.2)  # a little progress to show

        for width, height, dark in ((1280, 800, False), (1280, 800, True), (390, 844, False), (390, 844, True)):
            scheme = "dark" if dark else "light"
            for name, path, title in (("waiting", "/comfyui/", "comfyui is starting"),
                                      ("failed", "/sdxl/", "sdxl failed to start"),
                                      ("status", STATUS, "ondemand status")):
                with self.subTest(page=name, width=width, scheme=scheme):
                    page = self.page(width=width, height=height, dark=dark)
                    page.goto(self.url(path))
                    page.wait_for(lambda: page.title() == title, 10, "the %s page" % name)
                    if name == "status":
                        page.wait_for(lambda: "ollama" in page.text() and "sdxl" in page.text(), 5)
                    self.assertEqual(page.js("innerWidth"), width)
                    self.assertLessEqual(page.js("document.documentElement.scrollWidth"), width,
                                         "no sideways scrolling")
                    self.assertEqual(page.js("getComputedStyle(document.body).backgroundColor"),
                                     DARK_BG if dark else LIGHT_BG)
                    if name == "failed":
                        self.assertIn("in use by comfyui", page.text())
                    if name == "waiting":
                        self.assertEqual(page.js("document.querySelector('[role=progressbar]') !== null"), True)
                        self.assertRegex(page.text(), r"left, going by the last start|longer than the last start")
                    self.shot(page, "%s-%d-%s" % (name, width, scheme))
                    page.close()


if __name__ == "__main__":
    unittest.main()
