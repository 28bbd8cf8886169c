"""The module while controld cannot be reached: no answer claims that a start
is under way. X-Ondemand-State, the JSON answers and the waiting page say
controld is unreachable and since when; a request for which no state was
ever seen is told so at once (not held for ondemand_wait); the error log
says why, once."""
import json
import re
import os
import shutil
import time
import unittest

from module_case import ModuleTestCase
from harness import free_port, wait_until
from test_module_lifecycle import location

BROWSER = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Mode": "navigate"}


class UnreachableTest(ModuleTestCase):
    def front_without_controld(self, socket_path, main_extra=""):
        """nginx whose ondemand_control names socket_path, where workers cannot connect."""
        self.port = free_port()
        body = """
            ondemand_control unix:{sock};
            server {{
                listen 127.0.0.1:{port};
                location = /_ondemand {{ ondemand_status; }}
                location / {{ ondemand_service sample; ondemand_wait 60s; proxy_pass http://127.0.0.1:{up}; }}
            }}
            """.format(sock=socket_path, port=self.port, up=free_port())
        self.start_nginx(body, main_extra=main_extra)
        wait_until(lambda: self._listening(self.port), 10, message="nginx listening")
        wait_until(lambda: self.front_status().get("controld", {}).get("status") == "unreachable", 10,
                   message="the worker's first connection to fail")

    def assert_unreachable_at_once(self):
        started = time.time()
        api = self.get("/v1/models")
        self.assertLess(api.ended - started, 5.0, "held although nothing can start it")
        self.assertEqual(api.status, 503, api)
        self.assertEqual(api.headers.get("x-ondemand-state"), "unreachable")
        self.assertEqual(api.headers.get("retry-after"), "5")
        body = json.loads(api.body)
        self.assertEqual((body["error"], body["state"]), ("controld_unreachable", "unreachable"))
        self.assertIn("controld cannot be reached (since ", body["message"])
        self.assertIn("cannot be checked or started", body["message"])
        self.assertGreater(body["unreachable_since"], 0)
        self.assertGreaterEqual(body["unreachable_for_ms"], 0)
        page = self.get("/", headers=BROWSER)
        self.assertEqual(page.status, 503)
        self.assertEqual(page.headers.get("x-ondemand-state"), "unreachable")
        self.assertIn("controld cannot be reached (since ", page.body)
        # What the page says (its script knows the word, for when a start begins).
        shown = re.sub(r"<(script|style)[^>]*>.*?</\1>", "", page.body, flags=re.S)
        self.assertNotIn("starting", shown)
        status = self.front_status()["controld"]
        self.assertEqual(status["status"], "unreachable")
        self.assertGreater(status["unreachable_since"], 0)

    def test_no_socket_and_no_state_ever_seen(self):
        self.front_without_controld(self.path("missing.sock"))
        self.assert_unreachable_at_once()
        lines = self.error_log_lines("cannot connect to controld")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("No such file or directory", lines[0])

    @unittest.skipUnless(os.geteuid() == 0, "needs root to run nginx's workers as another user")
    def test_workers_refused_by_the_socket_are_told_why_once(self):
        # The demo's old failure: nginx started by root runs its workers as
        # nobody, and controld's socket is root's.
        self.start_controld_with([self.sample_yaml("sample")], extra='socket_mode: "0600"\n')
        self.front_without_controld(self.controld_socket, main_extra="user nobody nogroup;")
        self.assert_unreachable_at_once()
        time.sleep(1.5)  # retries meanwhile (50 ms .. 500 ms apart) are not logged again
        lines = self.error_log_lines("cannot connect to controld")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("Permission denied", lines[0])
        self.assertIn("this worker runs as nobody, which may not connect to the socket", lines[0])
        self.assertIn("socket_group and socket_mode in controld.yaml", lines[0])

    def test_a_service_last_seen_cold_is_not_said_to_be_starting(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("sample", port)])
        self.start_front(location("/", "sample", port, "ondemand_wait 2s;"))
        self.assertEqual(self.front_service("sample")["state"], "cold")
        self.controld.kill9()
        wait_until(lambda: self.front_status()["controld"]["status"] == "unreachable", 5, message="outage seen")

        held = self.get("/api")
        # Held for ondemand_wait (controld may be back any moment), then:
        self.assertEqual(held.status, 504, held)
        self.assertEqual(held.headers.get("x-ondemand-state"), "unreachable")
        body = json.loads(held.body)
        self.assertEqual((body["error"], body["state"]), ("timeout", "unreachable"))
        self.assertIn("controld cannot be reached (since ", body["message"])
        self.assertIn("nothing can start it now", body["message"])
        self.assertNotIn("carries on", body["message"])
        self.assertNotIn("task_id", body)

        page = self.get("/", headers=BROWSER)
        self.assertEqual(page.status, 503)
        self.assertEqual(page.headers.get("x-ondemand-state"), "unreachable")
        self.assertIn("sample cannot be started now", page.body)
        self.assertIn("controld cannot be reached", page.body)
        self.assertNotIn("start has been requested", page.body)
        self.assertEqual(len(self.error_log_lines("lost the connection to controld")), 1)

        # Back: the same request starts it and is served.
        self.restart_controld()
        wait_until(lambda: self.front_status()["controld"]["status"] == "connected", 5, message="reconnected")
        self.assertNotIn("unreachable_since", self.front_status()["controld"])
        served = self.get("/api")
        self.assertEqual(served.status, 200, served)


if __name__ == "__main__":
    unittest.main()
