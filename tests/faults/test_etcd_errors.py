"""etcd that answers but does not do what it was asked: the way a member
answers a request that timed out inside it (HTTP 503 with etcd's error
body). A proxy between controld and a real etcd passes everything through
(the watch stream too) and answers the first ownership claims itself. The
claim is tried again, the node comes to own its service, and a request held
meanwhile is served by one start."""
import base64
import json
import re
import socket
import threading

from cluster_case import ClusterTestCase
from harness import free_port

TIMED_OUT = json.dumps({"error": "etcdserver: request timed out", "code": 14,
                        "message": "etcdserver: request timed out"}).encode()


class ClaimRefusingProxy:
    """127.0.0.1:port -> etcd, one HTTP/1.1 request at a time per connection
    (curl sends no other way); claims (a kv/txn putting an owner key) are
    answered with TIMED_OUT until `failures` of them were."""

    def __init__(self, upstream_port, owner_prefix, failures):
        self.upstream_port = upstream_port
        self.owner_prefix = owner_prefix
        self.failures = failures
        self.refused = 0
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

    def _is_claim(self, head, body):
        if not head.startswith(b"POST /v3/kv/txn "):
            return False
        try:
            txn = json.loads(body)
        except ValueError:
            return False
        for op in txn.get("success", []):
            key = op.get("request_put", {}).get("key")
            if key and base64.b64decode(key).decode("utf-8", "replace").startswith(self.owner_prefix):
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
                    refuse = self.refused < self.failures and self._is_claim(head, body)
                    if refuse:
                        self.refused += 1
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

    def cluster_yaml(self, node):
        return ("cluster:\n  etcd: [\"http://127.0.0.1:%d\"]\n  node: %s\n  prefix: /od-test/\n"
                "  lease_ttl: 3s\n  request_timeout: 2s\n") % (self.proxy.port, node)

    def test_claims_etcd_answers_with_an_error_are_tried_again_and_the_held_request_is_served(self):
        upstream = int(self.etcd.endpoints[0].rsplit(":", 1)[1])
        self.proxy = ClaimRefusingProxy(upstream, "/od-test/owner/", failures=3)
        self.addCleanup(self.proxy.stop)
        port = free_port()
        self.start_node("node-1", self.service_yaml("claimed", port),
                        "location / { ondemand_service claimed; ondemand_wait 30s; proxy_pass http://127.0.0.1:%d; }"
                        % port)
        reply = self.node_get("node-1", "/held")
        self.assertEqual(reply.status, 200, reply)
        self.assertEqual(self.proxy.refused, 3, "the proxy refused three claims")
        self.assertEqual(self.owner("claimed"), "node-1")
        self.assertEqual(self.starts("claimed"), 1)
        with open(self.path("node-1-controld.log")) as f:
            log = f.read()
        self.assertEqual(log.count('event=etcd_error request="claim ownership"'), 3, log[-3000:])
        self.assertNotIn("event=etcd_unreachable", log, "an answer is not unreachability")
