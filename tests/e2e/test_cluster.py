"""The cluster: 3 controlds on a real 3-member etcd, each with its own nginx
(docs/CLUSTER.md). Each test starts its own etcd members, controlds and
nginx on free loopback ports."""
import os
import signal
import threading
import time

from cluster_case import ClusterTestCase, unb64
from harness import free_port, wait_until

NODES = ["node-1", "node-2", "node-3"]


def location(service, port, extra=""):
    return "location / { ondemand_service %s; ondemand_wait 60s; %s proxy_pass http://127.0.0.1:%d; }" % (
        service, extra, port)


class ClusterTest(ClusterTestCase):

    def start_cluster(self, name, port, idle="1h", ready_after=0.0, start_timeout="20s", extra="",
                      services=None):
        services = services or {}
        for node in NODES:
            yaml = services.get(node) or self.service_yaml(name, port, idle=idle, ready_after=ready_after,
                                                           start_timeout=start_timeout)
            self.start_node(node, yaml, location(name, port, extra))
        wait_until(lambda: all(self.node_service(n, name).get("owner") for n in NODES), 20,
                   message="every node knows the owner of %s" % name)

    def states(self, name):
        return {n: self.node_service(n, name).get("state") for n in NODES}

    def wait_all(self, name, state, timeout=20):
        wait_until(lambda: set(self.states(name).values()) == {state}, timeout,
                   message="every node shows %s %s" % (name, state))

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
