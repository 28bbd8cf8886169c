"""The cluster against an etcd that asks who is calling (docs/CLUSTER.md):
etcd's own user authentication (username + password_file), and TLS with
client certificates (ca_file, cert_file, key_file). Each test runs a real
one-member etcd set up the way an operator would, one controld joined to it
with its nginx, and a controld configured wrongly beside it, which must say
why it cannot reach etcd instead of serving without it."""
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request

from cluster_case import ETCD, ClusterTestCase, b64, unb64
from harness import CONTROLD, free_port, wait_until
from module_case import ModuleTestCase

PREFIX = "/od-test/"


class SecureEtcd:
    """One etcd member: plain HTTP with users, or HTTPS asking for client certificates."""

    def __init__(self, case, tls=None):
        self.case = case
        self.tls = tls  # {"ca": …, "cert": …, "key": …} of the server and the test's client
        self.client = free_port()
        self.peer = free_port()
        self.root_token = None
        scheme = "https" if tls else "http"
        self.endpoint = "%s://127.0.0.1:%d" % (scheme, self.client)

    def start(self):
        argv = [ETCD, "--name", "solo", "--data-dir", self.case.path("etcd-solo"),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", "http://127.0.0.1:%d" % self.peer,
                "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.peer,
                "--initial-cluster", "solo=http://127.0.0.1:%d" % self.peer,
                "--initial-cluster-token", "od-sec-%d" % os.getpid(), "--initial-cluster-state", "new",
                "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error"]
        if self.tls:
            argv += ["--cert-file", self.tls["server_cert"], "--key-file", self.tls["server_key"],
                     "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]
        self.case.spawn(argv, "etcd-solo.log", check_log=False)
        wait_until(self.healthy, 30, interval=0.2, message="etcd healthy")

    def _context(self):
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls["ca"])
        ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        return ctx

    def call(self, path, body, token=None):
        headers = {"Content-Type": "application/json"}
        if token or self.root_token:
            headers["Authorization"] = token or self.root_token
        req = urllib.request.Request(self.endpoint + "/v3/" + path, data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5, context=self._context()) as r:
            return json.loads(r.read().decode())

    def healthy(self):
        try:
            self.call("kv/range", {"key": b64("health")})
            return True
        except OSError:
            return False

    def enable_auth(self, user, password):
        """What `etcdctl user add`, `role grant-permission --prefix` and `auth enable` do: a root
        user, and a user that may read and write the controlds' prefix and nothing else."""
        self.call("auth/user/add", {"name": "root", "password": "root-pw"})
        self.call("auth/role/add", {"name": "root"})
        self.call("auth/user/grant", {"user": "root", "role": "root"})
        self.call("auth/role/add", {"name": "ondemand"})
        end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)
        self.call("auth/role/grant", {"name": "ondemand", "perm": {"permType": "READWRITE", "key": b64(PREFIX),
                                                                   "range_end": b64(end)}})
        self.call("auth/user/add", {"name": user, "password": password})
        self.call("auth/user/grant", {"user": user, "role": "ondemand"})
        self.call("auth/enable", {})
        self.root_token = self.call("auth/authenticate", {"name": "root", "password": "root-pw"})["token"]

    def get(self, key):
        kvs = self.call("kv/range", {"key": b64(key)}).get("kvs", [])
        return kvs[0] if kvs else None


def make_certificates(case):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    d = case.path("pki")
    os.makedirs(d, exist_ok=True)
    p = lambda name: os.path.join(d, name)  # noqa: E731

    def run(*argv):
        subprocess.run(["openssl"] + list(argv), check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ondemand test CA",
        "-keyout", p("ca.key"), "-out", p("ca.pem"))
    with open(p("server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    with open(p("client.ext"), "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % name, "-keyout", p(name + ".key"),
            "-out", p(name + ".csr"))
        run("x509", "-req", "-in", p(name + ".csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"), "-CAcreateserial",
            "-days", "2", "-extfile", p(name + ".ext"), "-out", p(name + ".pem"))
    return {"ca": p("ca.pem"), "server_cert": p("server.pem"), "server_key": p("server.key"),
            "client_cert": p("client.pem"), "client_key": p("client.key")}


class ClusterSecurityTest(ClusterTestCase):

    def setUp(self):
        # Not ClusterTestCase.setUp: each test starts its own etcd, set up its way.
        ModuleTestCase.setUp(self)
        if not os.path.exists(ETCD):
            self.skipTest("etcd-server is not installed (scripts/install-deps installs it)")
        self.nodes = {}
        self.cluster_settings = ""

    def cluster_yaml(self, node):
        return "cluster:\n  etcd: [%s]\n  node: %s\n  prefix: %s\n  lease_ttl: 3s\n  request_timeout: 2s\n%s" % (
            json.dumps(self.secure.endpoint), node, PREFIX, self.cluster_settings)

    def serve_one(self, name):
        port = free_port()
        self.start_node("node-1", self.service_yaml(name, port),
                        "location / { ondemand_service %s; ondemand_wait 30s; proxy_pass http://127.0.0.1:%d; }" % (
                            name, port))
        reply = self.node_get("node-1", "/hello")
        self.assertEqual(reply.status, 200, reply)
        self.assertIn("hello from %s" % name, reply.body)
        self.assertEqual(self.starts(name), 1)
        owner = self.secure.get(PREFIX + "owner/" + name)
        self.assertIsNotNone(owner, "the owner key is in etcd")
        self.assertEqual(unb64(owner["value"]), "node-1")

    def refused_node(self, settings, expect_in_reason):
        """A second controld whose credentials etcd refuses: it runs, says why, and starts nothing."""
        d = self.path("node-2")
        os.makedirs(d, exist_ok=True)
        sock = os.path.join(d, "c.sock")
        self.cluster_settings = settings
        config = self.write("node-2/controld.yaml", "socket: %s\nstate_dir: %s/state\n%sservices:\n%s" % (
            sock, d, self.cluster_yaml("node-2"), self.service_yaml("other", free_port())))
        proc = self.spawn([CONTROLD, "serve", "--config", config], "node-2-controld.log", check_log=False)
        self.nodes["node-2"] = {"socket": sock}
        wait_until(lambda: self.node_status("node-2").get("cluster", {}).get("etcd", {}).get("error"), 20,
                   message="node-2 reporting why etcd is unreachable")
        etcd = self.node_status("node-2")["cluster"]["etcd"]
        self.assertFalse(etcd.get("synced"), etcd)
        self.assertIn(expect_in_reason, etcd["error"].lower(), etcd)
        table = self.cli("status", socket_path=sock).stdout
        self.assertIn("etcd UNREACHABLE (", table)
        self.assertTrue(proc.alive(), "a refused controld keeps running and keeps trying")
        self.assertIsNone(self.secure.get(PREFIX + "owner/other"), "nothing was claimed without etcd")
        self.assertEqual(self.starts("other"), 0)
        # It keeps trying (every second), and says so once, not at every try.
        time.sleep(2.5)
        with open(self.path("node-2-controld.log")) as f:
            log = f.read()
        self.assertEqual(log.count("event=etcd_unreachable"), 1, log[-2000:])
        self.assertNotIn("event=etcd_error", log)

    def test_a_controld_with_an_etcd_user_and_password_file_owns_and_starts_its_service(self):
        self.secure = SecureEtcd(self)
        self.secure.start()
        self.secure.enable_auth("ondemand", "s3cret-pw")
        with self.assertRaises(urllib.error.HTTPError, msg="etcd refuses callers without a token"):
            self.secure.call("kv/range", {"key": b64(PREFIX)}, token="not-a-token")
        secret = self.write("etcd-password", "s3cret-pw\n")
        self.cluster_settings = "  username: ondemand\n  password_file: %s\n" % secret
        self.serve_one("authed")
        wrong = self.write("wrong-password", "guessed\n")
        self.refused_node("  username: ondemand\n  password_file: %s\n" % wrong, "auth")

    def test_a_controld_with_client_certificates_talks_to_an_etcd_that_asks_for_them(self):
        if shutil.which("openssl") is None:
            self.skipTest("openssl is not installed")
        tls = make_certificates(self)
        self.secure = SecureEtcd(self, tls=tls)
        self.secure.start()
        self.cluster_settings = "  ca_file: %s\n  cert_file: %s\n  key_file: %s\n" % (
            tls["ca"], tls["client_cert"], tls["client_key"])
        self.serve_one("tls")
        # The CA alone is not enough for an etcd that asks for a client certificate.
        self.refused_node("  ca_file: %s\n" % tls["ca"], "cert_file")

