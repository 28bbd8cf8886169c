"""The cluster: 3 controlds on a real 3-member etcd, each with its own nginx
(docs/CLUSTER.md). Each test starts its own etcd members, controlds and
nginx on free loopback ports."""
import json
import os
import signal
import threading
import time

from cluster_case import ClusterTestCase, b64, unb64
from harness import free_port, http_request, wait_until
from semaphore_double import DEFAULT_TOKEN, SemaphoreDouble
from test_semaphore_controld import HealthServer

NODES = ["node-1", "node-2", "node-3"]


def location(service, port, extra=""):
    return "location / { ondemand_service %s; ondemand_wait 60s; %s proxy_pass http://127.0.0.1:%d; }" % (
        service, extra, port)


class ClusterTest(ClusterTestCase):

    def start_cluster(self, name, port, idle="1h", ready_after=0.0, start_timeout="20s", extra="",
                      services=None, top_yaml=""):
        services = services or {}
        for node in NODES:
            yaml = services.get(node) or self.service_yaml(name, port, idle=idle, ready_after=ready_after,
                                                           start_timeout=start_timeout)
            self.start_node(node, yaml, location(name, port, extra), top_yaml)
        wait_until(lambda: all(self.node_service(n, name).get("owner") for n in NODES), 20,
                   message="every node knows the owner of %s" % name)

    def states(self, name):
        return {n: self.node_service(n, name).get("state") for n in NODES}

    def wait_all_of(self, nodes, name, state, timeout=20):
        wait_until(lambda: all(self.node_service(n, name).get("state") == state for n in nodes), timeout,
                   message="%s showing %s %s" % (", ".join(nodes), name, state))

    def wait_all(self, name, state, timeout=20):
        self.wait_all_of(NODES, name, state, timeout)

    def test_a_burst_over_three_nginx_starts_the_service_once(self):
        port = free_port()
        self.start_cluster("burst", port, ready_after=0.5)
        results = [None] * 100
        barrier = threading.Barrier(100)

        def one(i):
            barrier.wait()
            results[i] = self.node_get(NODES[i % 3], "/x%d" % i)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        self.assertEqual([r.status for r in results], [200] * 100, [r for r in results if r.status != 200][:3])
        self.assertTrue(all("hello from burst" in r.body for r in results))
        self.assertEqual(self.starts("burst"), 1, "one start command for the whole cluster")
        self.wait_all("burst", "warm")
        epochs = {n: self.node_service(n, "burst")["epoch"] for n in NODES}
        self.assertEqual(len(set(epochs.values())), 1, epochs)
        owners = {n: self.node_service(n, "burst")["owner"] for n in NODES}
        self.assertEqual(len(set(owners.values())), 1, owners)
        # Every node's workers were pushed the same state.
        wait_until(lambda: all(self.front(n, "burst").get("state") == "warm" for n in NODES), 10,
                   message="every nginx holds warm")
        # The CLI shows the cluster: members, leases, owners, etcd's health.
        out = self.cli("cluster", socket_path=self.nodes["node-2"]["socket"])
        self.assertEqual(out.returncode, 0, out.stderr)
        for node in NODES:
            self.assertIn(node, out.stdout)
        self.assertIn("reachable via", out.stdout)
        self.assertIn("burst -> %s" % owners["node-1"], out.stdout)
        table = self.cli("status", socket_path=self.nodes["node-3"]["socket"]).stdout
        self.assertIn("cluster: node node-3, 3 nodes; etcd reachable", table)

    def counted_stop_yaml(self, name, port, idle):
        """A service whose stop command counts its runs in <name>.stops."""
        start, stop = self.counted_start(name, port)
        stop = ["sh", "-c", 'echo run >> "$0"; exec "$@"', self.path("%s.stops" % name)] + stop
        return ("  {name}:\n    health_url: http://127.0.0.1:{port}/healthz\n    idle_timeout: {idle}\n"
                "    start_timeout: 20s\n    start_command: {start}\n    stop_command: {stop}\n").format(
            name=name, port=port, idle=idle, start=self.json(start), stop=self.json(stop))

    @staticmethod
    def json(v):
        return json.dumps(v)

    def stops(self, name):
        try:
            with open(self.path("%s.stops" % name)) as f:
                return len(f.read().splitlines())
        except OSError:
            return 0

    def warm_on_node_1(self, name, idle):
        """`name` (counted starts and stops, idle_timeout idle) on every node,
        owned by node-1 and started by a request through it."""
        port = free_port()
        yaml = self.counted_stop_yaml(name, port, idle)
        self.start_cluster(name, port, services={n: yaml for n in NODES})
        self.assertEqual(self.owner(name), "node-1")
        self.assertEqual(self.node_get("node-1", "/").status, 200)

    def owner_history(self, name):
        owner = self.owner(name)
        return self.node_service(owner, name).get("history", [])

    def test_a_stream_through_one_node_keeps_the_service_up_everywhere_then_one_stop(self):
        port = free_port()
        yaml = self.counted_stop_yaml("stream", port, "1s")
        self.start_cluster("stream", port, extra="proxy_buffering off;", services={n: yaml for n in NODES})
        self.assertEqual(self.node_get("node-1", "/").status, 200)
        done = {}

        def stream():
            done["r"] = self.node_get("node-1", "/stream?seconds=5")

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:  # 1 s idle_timeout, 5 s of streaming, nodes 2 and 3 idle
            self.assertEqual(set(self.states("stream").values()), {"warm"})
            time.sleep(0.3)
        t.join(20)
        self.assertEqual(done["r"].status, 200)
        self.assertGreaterEqual(done["r"].body.count("tick"), 45, "the whole stream arrived")
        self.wait_all("stream", "cold", 20)
        self.assertEqual(self.stops("stream"), 1, "exactly one stop")
        stopping = [h for h in self.owner_history("stream") if h["to"] == "stopping"]
        self.assertEqual(len(stopping), 1)
        self.assertGreaterEqual(stopping[0]["at"] / 1000.0, done["r"].ended - 0.05, "stopped after the stream ended")

    def test_a_request_through_another_node_during_the_stop_announcement_calls_it_off(self):
        self.warm_on_node_1("calloff", "2s")
        # node-2's controld is paused (shorter than lease_ttl): its workers'
        # answer cannot reach the owner, so the announcement lasts drain's 2 s.
        self.nodes["node-2"]["controld"].signal(signal.SIGSTOP)
        try:
            wait_until(lambda: self.node_service("node-1", "calloff").get("state") == "stopping", 10, interval=0.01,
                       message="node-1 announcing the stop")
            result = self.node_get("node-3", "/during")
        finally:
            self.nodes["node-2"]["controld"].signal(signal.SIGCONT)
        self.assertEqual(result.status, 200, result)
        history = self.node_service("node-1", "calloff")["history"]
        self.assertEqual(history[-1]["to"], "warm", history[-3:])
        self.assertIn("stop called off", history[-1]["detail"])
        self.assertEqual(self.stops("calloff"), 0)
        self.assertEqual(self.starts("calloff"), 1)

    def hold_during_start(self, name):
        """node-1 owns `name`, started cold by requests held on nodes 2 and 3:
        returns once the start command runs, with those requests' results to come."""
        self.assertEqual(self.owner(name), "node-1")
        held = {}

        def hold(node):
            held[node] = self.node_get(node, "/held")

        threads = [threading.Thread(target=hold, args=(n,), daemon=True) for n in ("node-2", "node-3")]
        for t in threads:
            t.start()
        wait_until(lambda: self.starts(name) == 1, 10, message="the start command running")
        wait_until(lambda: self.node_service("node-2", name).get("state") == "starting", 10,
                   message="node-2 seeing starting")
        return held, threads

    def assert_the_same_start_followed(self, name, held, threads):
        """The held requests served, one start command, one start in the new owner's history."""
        for t in threads:
            t.join(40)
        self.assertEqual(held["node-2"].status, 200, held["node-2"])
        self.assertEqual(held["node-3"].status, 200, held["node-3"])
        self.assertEqual(self.starts(name), 1, "never a second start")
        new_owner = self.owner(name)
        ops = [h for h in self.node_service(new_owner, name)["history"] if h["to"] == "starting"]
        self.assertEqual(len(ops), 1, "the new owner followed the start under way")

    def kill_the_owner(self, name):
        """SIGKILLs node-1's controld, the owner of `name`; returns the node
        that took over, once it did (within lease_ttl + 2 s)."""
        self.assertEqual(self.owner(name), "node-1")
        killed = time.monotonic()
        self.nodes["node-1"]["controld"].kill9()
        wait_until(lambda: self.owner(name) in ("node-2", "node-3"), self.lease_ttl + 2 + 1, interval=0.05,
                   message="another node owning %s" % name)
        took = time.monotonic() - killed
        self.assertLessEqual(took, self.lease_ttl + 2, "takeover within lease_ttl + 2 s")
        return self.owner(name)

    def test_the_owner_killed_mid_start_another_node_follows_the_same_start(self):
        port = free_port()
        self.start_cluster("slow", port, ready_after=4.0, start_timeout="30s")
        held, threads = self.hold_during_start("slow")
        self.kill_the_owner("slow")
        self.assert_the_same_start_followed("slow", held, threads)

    def test_requests_held_while_the_owner_is_dead_start_the_service_once_another_node_owns_it(self):
        """The owner of a cold service is SIGKILLed; requests through the other
        nodes come while its lease still runs, so their wakes go to a dead owner.
        The node that takes over starts the service once for all of them."""
        port = free_port()
        self.start_cluster("orphan", port)
        self.assertEqual(self.owner("orphan"), "node-1")
        killed = time.monotonic()
        self.nodes["node-1"]["controld"].kill9()
        results = {}

        def one(node):
            results[node] = self.node_get(node, "/held-on-" + node)

        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in ("node-2", "node-3")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(70)
        self.assertEqual({n: r.status for n, r in results.items()}, {"node-2": 200, "node-3": 200}, results)
        self.assertLess(time.monotonic() - killed, self.lease_ttl + 10, "answered after the takeover")
        self.assertIn(self.owner("orphan"), ("node-2", "node-3"))
        self.assertEqual(self.starts("orphan"), 1)

    def test_a_wake_a_node_sent_before_it_owned_the_service_starts_it_once_it_owns_it(self):
        """A node forwards its workers' wakes while another node owns the
        service, and never acts on its own forwarded wakes. Here the owner is a
        node that has gone quiet (a key under a lease the test holds); once its
        lease goes, node-1 owns the service and must start it for the request it
        still holds."""
        lease = self.etcd.call("lease/grant", {"TTL": 60})["ID"]
        self.etcd.call("kv/put", {"key": b64("/od-test/owner/late"), "value": b64("node-9"), "lease": lease})
        port = free_port()
        self.start_node("node-1", self.service_yaml("late", port), location("late", port))
        wait_until(lambda: self.node_service("node-1", "late").get("owner") == "node-9", 10,
                   message="node-1 knowing node-9 as the owner")
        result = {}
        held = threading.Thread(target=lambda: result.setdefault("r", self.node_get("node-1", "/late")), daemon=True)
        held.start()
        wait_until(lambda: self.front("node-1", "late").get("waiting", 0) >= 1, 10, message="the request held")
        time.sleep(0.5)  # its wake forwarded to node-9, which does nothing
        self.assertEqual(self.starts("late"), 0)
        self.etcd.call("lease/revoke", {"ID": lease})
        held.join(40)
        self.assertIn("r", result, "the request is still held 40 s after node-1 came to own the service")
        self.assertEqual(result["r"].status, 200, result["r"])
        self.assertLess(result["r"].ended - result["r"].started, 30, "started at the takeover, not at ondemand_wait")
        self.assertEqual(self.owner("late"), "node-1")
        self.assertEqual(self.starts("late"), 1)

    def semaphore_cluster(self, start_ms, idle):
        """gpu on every node, driven by the Semaphore double (template 22
        starts it in start_ms, 23 stops it), its health and answers served by
        the test (up from the start: the task decides when it is warm)."""
        double = SemaphoreDouble(templates=[{"id": 22, "run": "succeed", "after_ms": start_ms},
                                            {"id": 23, "run": "succeed", "after_ms": 50}], queue_delay_ms=50).start()
        self.addCleanup(double.stop)
        health = HealthServer(up=True)
        self.addCleanup(health.stop)
        top = "semaphore:\n  base_url: %s\n  project_id: 1\n  api_token: %s\n  http_timeout: 1s\n" % (
            double.url, DEFAULT_TOKEN)
        yaml = ("  gpu:\n    health_url: {health}\n    idle_timeout: {idle}\n    start_timeout: 20s\n"
                "    machine: gpu-01\n    semaphore:\n      start_template_id: 22\n      stop_template_id: 23\n"
                "      task_timeout: 20s\n      poll_interval: 200ms\n").format(health=health.url, idle=idle)
        self.start_cluster("gpu", health.server.server_address[1], services={n: yaml for n in NODES}, top_yaml=top)
        return double

    @staticmethod
    def tasks(double, template_id):
        return [t for t in double.all_tasks() if t["template_id"] == template_id]

    def state_in_etcd(self, name):
        kv = self.etcd.get("/od-test/state/" + name)
        return json.loads(unb64(kv["value"]))["snapshot"] if kv else {}

    def assert_one_task_then_one_idle_stop(self, double, new_owner):
        """Once idle, the new owner stops gpu with one stop task; one start
        task in all, and the history of one start (the task node-1 ran) and
        one stop, nothing between: health kept it warm."""
        self.wait_all_of(("node-2", "node-3"), "gpu", "cold", 25)
        self.assertEqual(len(self.tasks(double, 22)), 1, "exactly one start task")
        self.assertEqual(len(self.tasks(double, 23)), 1, "exactly one stop task")
        svc = self.node_service(new_owner, "gpu")
        self.assertEqual((svc["last_operation"]["kind"], svc["last_operation"]["task_id"],
                          svc["last_operation"]["task_status"]), ("stop", 2, "success"))
        history = svc["history"]
        self.assertEqual([(h["from"], h["to"]) for h in history],
                         [("cold", "starting"), ("starting", "warm"), ("warm", "stopping"), ("stopping", "cold")])
        self.assertEqual((history[1]["task_id"], history[3]["task_id"]), (1, 2))

    def test_the_owner_of_a_warm_semaphore_service_killed_another_node_keeps_it_warm_and_stops_it_once(self):
        double = self.semaphore_cluster(start_ms=300, idle="8s")
        first = self.node_get("node-1", "/first")
        self.assertEqual(first.status, 200, first)
        self.wait_all("gpu", "warm")
        new_owner = self.kill_the_owner("gpu")
        svc = self.node_service(new_owner, "gpu")
        self.assertEqual(svc["state"], "warm")
        self.assertEqual((svc["last_operation"]["task_id"], svc["last_operation"]["task_status"]), (1, "success"))
        for node in ("node-2", "node-3"):
            r = self.node_get(node, "/after")
            self.assertEqual((r.status, r.body), (200, "ok\n"), r)
        time.sleep(1.0)  # health checks of the new owner
        self.assertEqual(self.states("gpu")["node-2"], "warm")
        self.assertEqual(self.states("gpu")["node-3"], "warm")
        self.assertEqual(len(self.tasks(double, 22)), 1, "no second start task")
        self.assert_one_task_then_one_idle_stop(double, new_owner)

    def test_the_owner_killed_while_its_semaphore_task_runs_another_node_follows_that_task(self):
        # The task runs 7 s: the takeover (within lease_ttl + 2 s) comes while it runs.
        double = self.semaphore_cluster(start_ms=7000, idle="5s")
        held = {}
        t = threading.Thread(target=lambda: held.update(r=self.node_get("node-2", "/held")), daemon=True)
        t.start()
        wait_until(lambda: (self.state_in_etcd("gpu").get("operation") or {}).get("task_id") == 1, 10,
                   message="task 1 recorded in etcd")
        new_owner = self.kill_the_owner("gpu")
        self.assertEqual(double.task(1)["status"], "running", "taken over while the task runs")
        t.join(30)
        self.assertEqual((held["r"].status, held["r"].body), (200, "ok\n"), held["r"])
        self.assertEqual(double.task(1)["status"], "success")
        self.assertEqual(len(self.tasks(double, 22)), 1, "the new owner followed task 1 and started no other")
        with open(self.path("%s-controld.log" % new_owner)) as f:
            self.assertRegex(f.read(), r"operation_resumed service=gpu operation=start task_id=1\b")
        svc = self.node_service(new_owner, "gpu")
        self.assertEqual(svc["state"], "warm")
        self.assertEqual((svc["last_operation"]["task_id"], svc["last_operation"]["task_status"]), (1, "success"))
        self.assert_one_task_then_one_idle_stop(double, new_owner)

    def test_a_stopped_owner_hands_over_at_once_not_after_its_lease(self):
        self.lease_ttl = 20  # a takeover that waited for the lease to expire would take 20 s
        port = free_port()
        self.start_cluster("handover", port, ready_after=3.0, start_timeout="30s")
        held, threads = self.hold_during_start("handover")
        stopped = time.monotonic()
        node1 = self.nodes["node-1"]["controld"]
        node1.signal(signal.SIGTERM)
        wait_until(lambda: self.owner("handover") in ("node-2", "node-3"), 10, interval=0.05,
                   message="another node owning handover")
        took = time.monotonic() - stopped
        self.assertLess(took, 5, "the lease was revoked: no wait for lease_ttl (20 s)")
        wait_until(lambda: not node1.alive(), 10, message="node-1's controld exiting")
        self.assertEqual(node1.proc.returncode, 0)
        with open(self.path("node-1-controld.log")) as f:
            log = f.read()
        self.assertIn("cluster_leave", log)
        self.assertIn("lease revoked", log)
        self.assertIsNone(self.etcd.get("/od-test/nodes/node-1"), "node-1's keys went with its lease")
        self.assert_the_same_start_followed("handover", held, threads)
        self.wait_all_of(("node-2", "node-3"), "handover", "warm")

    def test_controld_stop_on_a_node_that_does_not_own_the_service_stops_it_through_the_owner(self):
        self.warm_on_node_1("remote", "1h")
        self.wait_all("remote", "warm")
        out = self.cli("stop", "remote", "--wait", socket_path=self.nodes["node-2"]["socket"], timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "remote: cold\n")
        self.wait_all("remote", "cold")
        self.assertEqual(self.stops("remote"), 1, "one stop command, run by the owner")
        history = self.node_service("node-1", "remote")["history"]
        self.assertEqual([(h["from"], h["to"], h["cause"]) for h in history[-2:]],
                         [("warm", "stopping", "cli"), ("stopping", "cold", "cli")])
        with open(self.path("node-1-controld.log")) as f:
            self.assertRegex(f.read(), r"operation_begin service=remote operation=stop .*via node-2")
        # Nothing to stop: said at once, nothing runs.
        out = self.cli("stop", "remote", socket_path=self.nodes["node-3"]["socket"], timeout=10)
        self.assertEqual((out.returncode, out.stdout), (0, "remote: cold\n"), out.stderr)
        self.assertEqual(self.stops("remote"), 1)

    def test_an_owner_paused_past_its_lease_writes_nothing_after_it(self):
        self.warm_on_node_1("paused", "2s")
        self.nodes["node-1"]["controld"].signal(signal.SIGSTOP)
        try:
            # While node-1 sleeps, its idle timer runs out too: on waking it
            # would stop the service if it still believed it owned it.
            wait_until(lambda: self.owner("paused") in ("node-2", "node-3"), self.lease_ttl + 5, interval=0.05,
                       message="another node owning paused")
            expired_at = int(self.etcd.call("kv/range", {"key": "eA=="})["header"]["revision"])
            time.sleep(1.0)
        finally:
            self.nodes["node-1"]["controld"].signal(signal.SIGCONT)
        wait_until(lambda: self.node_status("node-1").get("cluster", {}).get("lease", {}).get("id"), 20,
                   message="node-1 answering with a new lease")
        time.sleep(2.0)
        writes = self.etcd.history("/od-test/state/paused", expired_at + 1)
        writers = [json_writer(e) for e in writes if e.get("type") != "DELETE"]
        self.assertNotIn("node-1", writers, "a write from node-1 after its lease expired")
        owner_events = self.etcd.history("/od-test/owner/paused", expired_at + 1)
        self.assertNotIn("node-1", [unb64(e["kv"].get("value", "")) for e in owner_events if "kv" in e])
        self.wait_all("paused", "cold", 20)  # the new owner stops it for idleness, once
        self.assertEqual(self.stops("paused"), 1)
        self.assertIn("stopping", [h["to"] for h in self.node_service("node-1", "paused")["history"]])

    def test_with_every_etcd_member_down_warm_traffic_flows_and_nothing_starts(self):
        warm_port, cold_port = free_port(), free_port()
        services = self.service_yaml("up", warm_port) + self.service_yaml("down", cold_port)
        for node in NODES:
            self.start_node(node, services, location("up", warm_port).replace("location /", "location /up") +
                            location("down", cold_port).replace("location /", "location /down") +
                            "location /quick/ { ondemand_service down; ondemand_wait 1s; proxy_pass http://127.0.0.1:%d; }"
                            % cold_port)
        wait_until(lambda: all(self.node_service(n, "down").get("owner") for n in NODES), 20, message="owners")
        self.assertEqual(self.node_get("node-1", "/up/").status, 200)
        self.wait_all("up", "warm")
        self.etcd.stop_all()
        wait_until(lambda: all(not self.node_status(n)["cluster"]["etcd"]["reachable"] for n in NODES), 20,
                   message="every node seeing etcd unreachable")
        for node in NODES:
            for i in range(5):
                self.assertEqual(self.node_get(node, "/up/%d" % i).status, 200)
        out = self.cli("status", socket_path=self.nodes["node-2"]["socket"])
        self.assertIn("etcd UNREACHABLE", out.stdout)
        # The answers and pages say why nothing starts; none claims a start.
        cold = self.node_get("node-2", "/quick/", timeout=20)
        self.assertEqual(cold.status, 504, cold)
        answer = json.loads(cold.body)
        self.assertEqual(answer["state"], "cold")
        self.assertGreater(answer["etcd_unreachable_since"], 0)
        self.assertIn("controld cannot reach etcd", answer["message"])
        self.assertIn("Try again once etcd is back", answer["message"])
        self.assertNotIn("a start has been requested", answer["message"])
        page = self.node_get("node-3", "/down/", timeout=20, headers={"Accept": "text/html,*/*;q=0.8"})
        self.assertEqual(page.status, 503, page)
        self.assertIn("down cannot be started now", page.body)
        self.assertIn("etcd unreachable for", page.body)
        self.assertIn("once etcd is back", page.body)
        self.assertNotIn("id=\"od-bar\"", page.body, "no progress bar: nothing is starting")
        for node in NODES:
            self.assertGreater(self.front(node, "down").get("etcd_unreachable_since", 0), 0, node)
        _, _, status_page = http_request(self.nodes["node-1"]["port"], "/_ondemand", headers={"Accept": "text/html"})
        self.assertIn("controld cannot reach etcd", status_page)
        self.assertEqual(self.starts("down"), 0, "nothing starts while etcd is away")
        self.etcd.restart_all()
        wait_until(lambda: all(self.node_status(n)["cluster"]["etcd"]["reachable"] for n in NODES), 30,
                   message="every node seeing etcd again")
        wait_until(lambda: all("etcd_unreachable_since" not in self.front(n, "up") for n in NODES), 10,
                   message="every node's workers told that etcd is back")
        self.assertEqual(self.node_get("node-3", "/down/").status, 200)
        self.assertEqual(self.starts("down"), 1)
        self.assertEqual(self.starts("up"), 1, "no double start after catching up")
        self.wait_all("down", "warm")

    def test_a_different_idle_timeout_on_one_node_is_reported_by_both(self):
        port = free_port()
        other = self.service_yaml("mixed", port, idle="30m")
        self.start_cluster("mixed", port, services={"node-3": other})

        def reported(node):
            return [m for m in self.node_status(node)["cluster"]["mismatches"] if m["service"] == "mixed"]

        wait_until(lambda: reported("node-1") and reported("node-3"), 10, message="the mismatch reported")
        m1, m3 = reported("node-1")[0], reported("node-3")[0]
        self.assertEqual(m1["nodes"], ["node-1", "node-3"])
        self.assertEqual(m3["nodes"][0], "node-3")
        self.assertIn("idle_timeout_ms", m1["keys"])
        self.assertIn("idle_timeout_ms", m3["keys"])
        self.assertEqual(m3["nodes"].count("node-1") + m3["nodes"].count("node-2"), 1)
        with open(self.path("node-3-controld.log")) as f:
            self.assertIn("cluster_config_mismatch", f.read())
        self.assertIn("CONFIG MISMATCH: service mixed", self.cli("status", socket_path=self.nodes["node-1"]["socket"])
                      .stdout)


def json_writer(event):
    try:
        return json.loads(unb64(event["kv"]["value"])).get("writer")
    except (KeyError, ValueError):
        return None
