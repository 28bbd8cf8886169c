"""etcd that answers but does not do what it was asked: the way a member
answers a request that timed out inside it (HTTP 503 with etcd's error
body). A proxy between a controld and a real etcd passes everything through
(the watch stream too) and answers chosen writes itself: ownership claims,
a forwarded wake, an activity report. Each is sent again, and the requests
held meanwhile are served by one start."""
import base64
import json
import re
import socket
import threading

from cluster_case import ClusterTestCase
from harness import free_port, wait_until

def location(service, port):
    return "location / { ondemand_service %s; ondemand_wait 30s; proxy_pass http://127.0.0.1:%d; }" % (service, port)


TIMED_OUT = json.dumps({"error": "etcdserver: request timed out", "code": 14,
                        "message": "etcdserver: request timed out"}).encode()


def b64decode(text):
    return base64.b64decode(text).decode("utf-8", "replace")


def puts(path, body):
    """(key, value) of what a kv/put writes, or a kv/txn when its compare holds."""
    request = json.loads(body)
    if path == "kv/put":
        return [(b64decode(request.get("key", "")), b64decode(request.get("value", "")))]
    return [(b64decode(op["request_put"]["key"]), b64decode(op["request_put"].get("value", "")))
            for op in request.get("success", []) if "request_put" in op]


class RefusingProxy:
    """127.0.0.1:port -> etcd, one HTTP/1.1 request at a time per connection
    (curl sends no other way). `refuse` maps a name to (path, test of a
    (key, value) it writes, how many): the first that many such requests are
    answered with TIMED_OUT; `refused` counts them by name."""

    def __init__(self, upstream_port, refuse):
        self.upstream_port = upstream_port
        self.refuse = refuse
        self.refused = {name: 0 for name in refuse}
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def refuse_also(self, name, path, matches, times):
        with self.lock:
            self.refuse[name] = (path, matches, times)
            self.refused[name] = 0

    def _to_refuse(self, head, body):
        for name, (path, matches, times) in self.refuse.items():
            if self.refused[name] >= times or not head.startswith(b"POST /v3/%s " % path.encode()):
                continue
            try:
                written = puts(path, body)
            except (ValueError, KeyError):
                continue
            if any(matches(k, v) for k, v in written):
                self.refused[name] += 1
                return True
        return False

    def _serve(self, client):
        upstream = None
        pending = b""
        try:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = client.recv(65536)
                    if not data:
                        return
                    pending += data
                head, rest = pending.split(b"\r\n\r\n", 1)
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                length = int(m.group(1)) if m else 0
                while len(rest) < length:
                    data = client.recv(65536)
                    if not data:
                        return
                    rest += data
                body, pending = rest[:length], rest[length:]
                with self.lock:
                    refuse = self._to_refuse(head, body)
                if refuse:
                    client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(TIMED_OUT), TIMED_OUT))
                    return
                if upstream is None:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                    self.sockets.append(upstream)
                    threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
                upstream.sendall(head + b"\r\n\r\n" + body)
        except OSError:
            pass
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def stop(self):
        self.server.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


class EtcdAnswersErrors(ClusterTestCase):

    def setUp(self):
        super().setUp()
        self.proxied = {}  # node -> RefusingProxy between it and etcd

    def cluster_yaml(self, node):
        if node not in self.proxied:
            return super().cluster_yaml(node)
        return ("cluster:\n  etcd: [\"http://127.0.0.1:%d\"]\n  node: %s\n  prefix: /od-test/\n"
                "  lease_ttl: 3s\n  request_timeout: 2s\n") % (self.proxied[node].port, node)

    def proxy(self, node, refuse):
        upstream = int(self.etcd.endpoints[0].rsplit(":", 1)[1])
        self.proxied[node] = RefusingProxy(upstream, refuse)
        self.addCleanup(self.proxied[node].stop)
        return self.proxied[node]

    def log_of(self, node):
        with open(self.path("%s-controld.log" % node)) as f:
            return f.read()

    def test_claims_etcd_answers_with_an_error_are_tried_again_and_the_held_request_is_served(self):
        proxy = self.proxy("node-1", {"claim": ("kv/txn", lambda k, v: k.startswith("/od-test/owner/"), 3)})
        port = free_port()
        self.start_node("node-1", self.service_yaml("claimed", port), location("claimed", port))
        reply = self.node_get("node-1", "/held")
        self.assertEqual(reply.status, 200, reply)
        self.assertEqual(proxy.refused["claim"], 3, "the proxy refused three claims")
        self.assertEqual(self.owner("claimed"), "node-1")
        self.assertEqual(self.starts("claimed"), 1)
        log = self.log_of("node-1")
        self.assertEqual(log.count('event=etcd_error request="claim ownership"'), 3, log[-3000:])
        self.assertNotIn("event=etcd_unreachable", log, "an answer is not unreachability")

    def test_a_forwarded_wake_and_an_activity_report_etcd_refuses_are_sent_again(self):
        """node-1 owns the service; node-2 reaches etcd through the proxy, which
        refuses node-2's first wake, and later the report that its last
        request in flight ended. The request held on node-2 is still served by
        one start, and node-1 still learns that node-2 is idle (else it would
        count that request in flight for ever and never stop the service)."""
        port = free_port()
        self.start_node("node-1", self.service_yaml("shared", port, idle="2s"), location("shared", port))
        wait_until(lambda: self.owner("shared") == "node-1", 10, message="node-1 owning shared")
        proxy = self.proxy("node-2", {"wake": ("kv/put", lambda k, v: k.startswith("/od-test/wake/"), 1)})
        self.start_node("node-2", self.service_yaml("shared", port, idle="2s"), location("shared", port))
        reply = self.node_get("node-2", "/held")
        self.assertEqual(reply.status, 200, reply)
        self.assertLess(reply.ended - reply.started, 15, "served after the wake went again, not at ondemand_wait")
        self.assertEqual(proxy.refused["wake"], 1)
        self.assertEqual(self.starts("shared"), 1)
        # A request through node-2 longer than idle_timeout, in flight on node-2
        # only; once node-1 knows of it, the report of its end is refused.
        streamed = {}
        stream = threading.Thread(target=lambda: streamed.setdefault("r", self.node_get(
            "node-2", "/stream?seconds=4", timeout=20)), daemon=True)
        stream.start()
        wait_until(lambda: self.node_service("node-1", "shared").get("in_flight", 0) >= 1, 5,
                   message="node-1 counting node-2's request in flight")
        proxy.refuse_also("activity", "kv/put", lambda k, v: k.startswith("/od-test/activity/") and
                          json.loads(v).get("in_flight", 1) == 0, 1)
        stream.join(20)
        self.assertEqual(streamed["r"].status, 200, streamed["r"])
        wait_until(lambda: self.node_service("node-1", "shared").get("state") in ("stopping", "cold"), 10,
                   message="node-1 stopping the service once idle")
        self.assertEqual(proxy.refused["activity"], 1)
        log = self.log_of("node-2")
        self.assertIn('event=etcd_error request="forward wake/shared"', log)
        self.assertIn('event=etcd_error request="report activity"', log)
