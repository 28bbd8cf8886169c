"""One endpoint, many services: the service is chosen per request, from a
variable or from the JSON body's "model". Real nginx with the module, real
controld, three sample model servers that answer with a hash of the body
they received."""
import hashlib
import json
import os
import re
import signal
import socket
import unittest

from module_case import ModuleTestCase
from harness import free_port, wait_until
from h2client import H2Connection

# What the workers route: three services, the second with an alias.
MODELS = {"svc-a": ["m-a"], "svc-b": ["m-b", "m-b-alias"], "svc-c": ["m-c"]}

V1 = """
location /v1/ {
    ondemand_service $ondemand_model;
    client_max_body_size 16m;
    proxy_pass http://$ondemand_upstream;
}
location = /v1/models { ondemand_models openai; }
location = /api/tags { ondemand_models ollama; }
"""


def chat(model, content="Hello", extra_messages=0, model_last=True):
    """An OpenAI chat completion request, "model" last as many clients send it."""
    messages = [{"role": "system", "content": "You are terse. \"model\": \"decoy\" {[}]"}]
    messages += [{"role": "user", "content": "%s %d" % (content, i)} for i in range(extra_messages)]
    messages.append({"role": "user", "content": content})
    if model_last:
        return json.dumps({"messages": messages, "stream": False, "model": model}).encode()
    return json.dumps({"model": model, "messages": messages}).encode()


def sha(data):
    return hashlib.sha256(data).hexdigest()


# The JSON schema of OpenAI's GET /v1/models answer (ListModelsResponse in
# openai-openapi; what the openai SDKs' Model/SyncPage types parse).
OPENAI_MODELS_SCHEMA = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "object", "created", "owned_by"],
                "properties": {
                    "id": {"type": "string"},
                    "object": {"type": "string", "enum": ["model"]},
                    "created": {"type": "integer"},
                    "owned_by": {"type": "string"},
                },
            },
        },
    },
}

# Ollama's GET /api/tags answer (api/types.go ListResponse / ListModelResponse).
OLLAMA_TAGS_SCHEMA = {
    "type": "object",
    "required": ["models"],
    "properties": {
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "model", "modified_at", "size", "digest", "details"],
                "properties": {
                    "name": {"type": "string"},
                    "model": {"type": "string"},
                    "modified_at": {"type": "string",
                                    "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"},
                    "size": {"type": "integer"},
                    "digest": {"type": "string"},
                    "details": {
                        "type": "object",
                        "properties": {
                            "parent_model": {"type": "string"},
                            "format": {"type": "string"},
                            "family": {"type": "string"},
                            "families": {"type": "array", "items": {"type": "string"}},
                            "parameter_size": {"type": "string"},
                            "quantization_level": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}

# The error shape of OpenAI's API.
OPENAI_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        },
    },
}


def schema_errors(value, schema, where="$"):
    """The subset of JSON Schema the schemas above use: type, required,
    properties, items, enum, pattern. Returns what does not conform."""
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
                  "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
                  "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)}
        if not any(checks[n](value) for n in names):
            return ["%s: expected %s, got %r" % (where, "/".join(names), value)]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append("%s: %r is not one of %r" % (where, value, schema["enum"]))
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errors.append("%s: %r does not match %s" % (where, value, schema["pattern"]))
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append("%s: missing %r" % (where, key))
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, "%s.%s" % (where, key))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], "%s[%d]" % (where, i))
    return errors


class RoutingCase(ModuleTestCase):

    def model_services(self, ready_after=0.0, names=("svc-a", "svc-b", "svc-c"), models=None):
        """controld with the model servers; returns {service: port}."""
        models = models or MODELS
        ports = {name: free_port() for name in names}
        services = [self.sample_yaml(name, ports[name], ready_after=ready_after,
                                     extra="    base_url: http://127.0.0.1:%d\n    models: %s\n"
                                           % (ports[name], json.dumps(models[name])))
                    for name in names]
        self.start_controld_with(services)
        return ports

    def post(self, path, body, headers=None, timeout=30):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        return self.get(path, method="POST", body=body, headers=h, timeout=timeout)

    def assert_answered_by(self, result, service, body):
        self.assertEqual(result.status, 200, result)
        answer = json.loads(result.body)
        self.assertEqual(answer["service"], service)
        self.assertEqual(answer["length"], len(body))
        self.assertEqual(answer["sha256"], sha(body), "the body reached the service byte for byte")

    def starts(self, service):
        return [h for h in self.history(service) if h["to"] == "starting"]


class ModelRoutingTest(RoutingCase):

    def test_each_model_wakes_its_own_service_and_the_others_stay_cold(self):
        self.model_services()
        self.start_front(V1)

        body = chat("m-a")
        self.assert_answered_by(self.post("/v1/chat/completions", body), "svc-a", body)
        self.assertEqual(self.service_state("svc-a"), "warm")
        for _ in range(3):
            self.assert_answered_by(self.post("/v1/chat/completions", body), "svc-a", body)
        self.assertEqual(self.service_state("svc-b"), "cold", "m-b stays cold while only m-a is used")
        self.assertEqual(self.service_state("svc-c"), "cold")
        self.assertEqual(len(self.starts("svc-a")), 1)

        body = chat("m-b", model_last=False)
        self.assert_answered_by(self.post("/v1/chat/completions", body), "svc-b", body)
        alias = chat("m-b-alias")
        self.assert_answered_by(self.post("/v1/completions", alias), "svc-b", alias)
        self.assertEqual(len(self.starts("svc-b")), 1, "the alias leads to the same, already warm, service")
        self.assertEqual(self.service_state("svc-c"), "cold")

        # Activity is counted for the resolved service, as for a fixed name.
        wait_until(lambda: self.status("svc-a")["services"][0].get("started_total", 0) >= 4, 10,
                   message="svc-a's requests counted")
        wait_until(lambda: self.front_service("svc-a").get("in_flight") == 0, 10, message="svc-a in flight 0")
        wait_until(lambda: self.status("svc-b")["services"][0].get("started_total", 0) >= 2, 10,
                   message="svc-b's requests (by model and by alias) counted")

    def test_a_5_mib_body_with_the_model_last_and_a_body_in_a_temporary_file_arrive_unchanged(self):
        self.model_services(names=("svc-a", "svc-c"))
        self.start_front(V1 + """
location /small-buffer/ {
    ondemand_service $ondemand_model;
    client_body_buffer_size 8k;
    client_max_body_size 16m;
    rewrite ^/small-buffer(/.*)$ $1 break;
    proxy_pass http://$ondemand_upstream;
}
""")
        prompt = "".join("line %d: \"model\": \"decoy\", {[\\u00e9]}\n" % i for i in range(120000))
        big = chat("m-c", content=prompt[:5 * 1024 * 1024])
        self.assertGreater(len(big), 5 * 1024 * 1024)
        self.assertTrue(big.endswith(b'"model": "m-c"}'))
        self.assert_answered_by(self.post("/v1/chat/completions", big, timeout=60), "svc-c", big)
        self.assertEqual(self.service_state("svc-a"), "cold")

        medium = chat("m-a", content="x" * 100000, extra_messages=50)
        self.assert_answered_by(self.post("/small-buffer/v1/chat/completions", medium), "svc-a", medium)
        self.assertTrue(self.error_log_lines("a client request body is buffered to a temporary file"),
                        "nginx kept the body in a temporary file")

    def test_fifty_concurrent_posts_to_a_cold_model_start_it_once_and_each_gets_its_own_answer(self):
        self.model_services(ready_after=1.5, names=("svc-c",))
        self.start_front(V1, workers=2)
        bodies = [chat("m-c", content="request %d " % i + "y" * (i * 97)) for i in range(50)]

        results = [None] * 50
        import threading
        barrier = threading.Barrier(50)

        def one(i):
            barrier.wait()
            results[i] = self.post("/v1/chat/completions", bodies[i], timeout=60)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(50)]
        for t in threads:
            t.start()
        self.join(threads, 90)
        for i, result in enumerate(results):
            with self.subTest(request=i):
                self.assert_answered_by(result, "svc-c", bodies[i])
        self.assertEqual(len(self.starts("svc-c")), 1, "one start for fifty held requests")

    def test_the_model_lists_have_every_model_with_its_state_in_the_shapes_clients_parse(self):
        self.model_services()
        self.start_front(V1)
        self.assert_answered_by(self.post("/v1/chat/completions", chat("m-a")), "svc-a", chat("m-a"))

        result = self.get("/v1/models")
        self.assertEqual(result.status, 200, result)
        self.assertTrue(result.headers.get("content-type", "").startswith("application/json"))
        listing = json.loads(result.body)
        self.assertEqual(schema_errors(listing, OPENAI_MODELS_SCHEMA), [])
        ids = [m["id"] for m in listing["data"]]
        self.assertEqual(ids, ["m-a", "m-b", "m-b-alias", "m-c"])
        by_id = {m["id"]: m for m in listing["data"]}
        self.assertEqual(by_id["m-a"]["service"], "svc-a")
        self.assertEqual(by_id["m-a"]["state"], "warm")
        self.assertEqual(by_id["m-b-alias"]["service"], "svc-b")
        self.assertEqual(by_id["m-b"]["state"], "cold")
        self.assertEqual(by_id["m-c"]["state"], "cold")

        result = self.get("/api/tags")
        self.assertEqual(result.status, 200, result)
        tags = json.loads(result.body)
        self.assertEqual(schema_errors(tags, OLLAMA_TAGS_SCHEMA), [])
        self.assertEqual([m["name"] for m in tags["models"]], ids)
        self.assertEqual({m["name"]: m["state"] for m in tags["models"]}["m-a"], "warm")
        self.assertEqual(self.get("/v1/models", method="POST", body=b"{}").status, 405)

        # The schema check itself finds what is wrong.
        self.assertTrue(schema_errors({"object": "list", "data": [{"id": 1}]}, OPENAI_MODELS_SCHEMA))


class ChunkedTest(RoutingCase):

    def test_a_chunked_body_sent_in_pieces_is_routed_and_arrives_unchanged(self):
        self.model_services(names=("svc-a", "svc-b"))
        self.start_front(V1)
        body = chat("m-b", content="c" * 30000)
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
            conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: routed\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            for at in range(0, len(body), 7000):
                piece = body[at:at + 7000]
                conn.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            conn.sendall(b"0\r\n\r\n")
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        if b"transfer-encoding: chunked" in head.lower():
            decoded = b""
            while payload:
                size, _, payload = payload.partition(b"\r\n")
                n = int(size, 16)
                decoded, payload = decoded + payload[:n], payload[n + 2:]
            payload = decoded
        answer = json.loads(payload)
        self.assertEqual(answer["service"], "svc-b")
        self.assertEqual(answer["length"], len(body))
        self.assertEqual(answer["sha256"], sha(body), "the chunked body reached the service byte for byte")
        self.assertEqual(self.service_state("svc-a"), "cold")


class Http2Test(RoutingCase):

    def test_http2_posts_on_one_connection_each_reach_the_model_their_body_names(self):
        self.model_services(names=("svc-a", "svc-b"))
        h2 = free_port()
        self.start_front(V1, http_extra="server { listen 127.0.0.1:%d http2; %s }" % (h2, V1.replace("\n", " ")))
        # Each body in DATA frames of 4 KiB, "model" in the last one, the
        # streams' frames interleaved.
        bodies = [chat(model, content="stream %d " % i + "z" * 9000) for i, model in enumerate(["m-a", "m-b-alias", "m-a"])]
        conn = H2Connection(h2)
        self.addCleanup(conn.close)
        conn.post_many("/v1/chat/completions", bodies)
        streams = conn.wait_all()
        for stream, body, service in zip(streams, bodies, ["svc-a", "svc-b", "svc-a"]):
            with self.subTest(stream=stream.id):
                self.assertEqual((stream.status, stream.reset), (200, None), stream.body[:200])
                answer = json.loads(stream.body)
                self.assertEqual(answer["service"], service)
                self.assertEqual(answer["sha256"], sha(body), "the body reached the service byte for byte")
        self.assertEqual(len(self.starts("svc-a")), 1)


class AnswersTest(RoutingCase):

    def test_unknown_models_and_bad_bodies_get_answers_in_the_api_shape(self):
        self.model_services(names=("svc-a",))
        self.start_front(V1 + """
location /engine/ {
    ondemand_service $ondemand_model;
    ondemand_model_field engine;
    rewrite ^/engine(/.*)$ $1 break;
    proxy_pass http://$ondemand_upstream;
}
""")
        for _ in range(4):
            result = self.post("/v1/chat/completions", chat("gpt-7-unknown"))
            self.assertEqual(result.status, 404, result)
            error = json.loads(result.body)
            self.assertEqual(schema_errors(error, OPENAI_ERROR_SCHEMA), [])
            self.assertEqual(error["error"]["code"], "model_not_found")
            self.assertEqual(error["error"]["type"], "invalid_request_error")
            self.assertIn("gpt-7-unknown", error["error"]["message"])
            self.assertIn("m-a", error["error"]["message"], "the answer lists what exists")
        self.assertEqual(len(self.error_log_lines('the model "gpt-7-unknown"')), 1, "logged once per name")

        result = self.post("/v1/chat/completions", b"model=m-a&prompt=hi")
        self.assertEqual(result.status, 400, result)
        error = json.loads(result.body)["error"]
        self.assertEqual(error["code"], "invalid_json")
        self.assertIn("not JSON", error["message"])

        result = self.post("/v1/chat/completions", json.dumps({"messages": []}).encode())
        self.assertEqual(result.status, 400, result)
        error = json.loads(result.body)["error"]
        self.assertIn('no "model" field', error["message"])
        self.assertEqual(error["param"], "model")

        result = self.post("/v1/chat/completions", json.dumps({"model": 3}).encode())
        self.assertEqual(result.status, 400)
        self.assertIn("not a string", json.loads(result.body)["error"]["message"])

        # Another field name, per location.
        body = json.dumps({"model": "nope", "engine": "m-a"}).encode()
        self.assert_answered_by(self.post("/engine/v1/completions", body), "svc-a", body)
        self.assertIn('no "engine" field', json.loads(self.post("/engine/v1/x", chat("m-a")).body)["error"]["message"])
        self.assertEqual(self.service_state("svc-a"), "warm")

    def test_a_get_without_a_body_takes_the_map_default_or_is_off(self):
        ports = self.model_services(names=("svc-a", "svc-b"))
        static = free_port()
        self.start_front("""
location /mapped/ {
    ondemand_service $routed;
    proxy_pass http://$ondemand_upstream;
}
location /plain/ {
    ondemand_service $ondemand_model;
    proxy_pass http://127.0.0.1:%d;
}
""" % static, http_extra="""
map $ondemand_model $routed { "" svc-b; default $ondemand_model; }
server { listen 127.0.0.1:%d; location / { return 200 "not woken\\n"; } }
""" % static)
        result = self.get("/mapped/models")
        self.assertEqual(result.status, 200, result)
        self.assertIn("hello from svc-b", result.body)
        # The same location with a body: the map sees the body's model.
        body = chat("m-a")
        self.assert_answered_by(self.post("/mapped/v1/x", body), "svc-a", body)

        result = self.get("/plain/anything")
        self.assertEqual(result.status, 200, result)
        self.assertEqual(result.body, "not woken\n")
        del ports

    def test_map_by_host_routes_two_host_names_to_two_services(self):
        self.model_services(names=("svc-a", "svc-b"))
        self.start_front("""
location / {
    ondemand_service $host_service;
    proxy_pass http://$ondemand_upstream;
    proxy_set_header X-Routed-To $ondemand_service;
}
""", http_extra="""
map $host $host_service { a.example svc-a; b.example m-b; default ""; }
""")
        result = self.get("/", headers={"Host": "a.example"})
        self.assertEqual(result.status, 200, result)
        self.assertIn("hello from svc-a", result.body)
        result = self.get("/", headers={"Host": "b.example"})
        self.assertIn("hello from svc-b", result.body, "a model name in the map leads to its service")
        self.assertEqual(self.service_state("svc-b"), "warm")
        # A host the map does not know: off, so nginx has nowhere to proxy.
        self.assertNotEqual(self.get("/", headers={"Host": "c.example"}).status, 200)

    def test_an_unknown_service_from_a_variable_is_answered_502_and_logged_once(self):
        self.model_services(names=("svc-a",))
        self.start_front("""
location / {
    ondemand_service $http_x_service;
    proxy_pass http://$ondemand_upstream;
}
""")
        for _ in range(3):
            result = self.get("/", headers={"X-Service": "nosuch"})
            self.assertEqual(result.status, 502, result)
            self.assertEqual(json.loads(result.body)["service"], "nosuch")
        self.assertEqual(len(self.error_log_lines('service or model "nosuch"')), 1)
        self.assertIn("hello from svc-a", self.get("/", headers={"X-Service": "svc-a"}).body)


class RoutedLimitsTest(RoutingCase):

    def test_a_routed_location_shows_browsers_the_waiting_page_and_limits_waiting_per_resolved_service(self):
        self.model_services(ready_after=4.0, names=("svc-a", "svc-b"))
        self.start_front("""
location /v1/ {
    ondemand_service $ondemand_model;
    ondemand_max_waiting 3;
    proxy_pass http://$ondemand_upstream;
}
location /ui/ {
    ondemand_service $arg_model;
    proxy_pass http://$ondemand_upstream;
}
""")
        # A browser opening a cold model's page gets the waiting page of
        # the service the alias resolves to, at once, and the start begins.
        page = self.get("/ui/?model=m-b-alias", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        self.assertEqual(page.status, 503, page)
        self.assertIn("text/html", page.headers.get("content-type", ""))
        self.assertEqual(page.headers.get("retry-after"), "3")
        self.assertIn('http-equiv="refresh"', page.body)
        self.assertIn("svc-b", page.body)
        self.assertLess(page.ended - page.started, 0.5, "the page is answered at once")
        wait_until(lambda: self.service_state("svc-b") in ("starting", "warm"), 10, message="svc-b woken by the page")

        # Three POSTs to the cold m-a wait; the fourth is refused by svc-a's
        # limit, while a POST to m-b (svc-b, also cold) still waits.
        bodies = [chat("m-a", content="held %d" % i) for i in range(3)]
        results = [None] * 4
        import threading

        def one(i, body):
            results[i] = self.post("/v1/chat/completions", body, timeout=60)

        threads = [threading.Thread(target=one, args=(i, bodies[i]), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        self.wait_waiting("svc-a", 3)
        fourth = self.post("/v1/chat/completions", chat("m-a", content="one too many"))
        self.assertEqual(fourth.status, 503, fourth)
        self.assertEqual(fourth.headers.get("retry-after"), "5")
        self.assertEqual(json.loads(fourth.body)["error"], "too_many_waiting")
        self.assertEqual(json.loads(fourth.body)["service"], "svc-a")
        other = chat("m-b", content="not limited by svc-a")
        threads.append(threading.Thread(target=one, args=(3, other), daemon=True))
        threads[-1].start()
        self.join(threads, 60)
        for i in range(3):
            with self.subTest(request=i):
                self.assert_answered_by(results[i], "svc-a", bodies[i])
        self.assert_answered_by(results[3], "svc-b", other)
        self.assertEqual(len(self.starts("svc-a")), 1)
        self.assertEqual(len(self.starts("svc-b")), 1)


class ReloadTest(RoutingCase):

    def wait_model_service(self, model, service):
        def listed():
            result = self.get("/v1/models")
            if result.status != 200:
                return False
            return {m["id"]: m["service"] for m in json.loads(result.body)["data"]}.get(model) == service
        wait_until(listed, 15, message="the worker sees %s in %s" % (model, service))

    def test_a_reload_that_moves_a_model_to_another_service_is_followed_by_the_next_request(self):
        models = {"svc-a": ["m-a", "m-moving"], "svc-b": ["m-b"]}
        self.model_services(names=("svc-a", "svc-b"), models=models)
        self.start_front(V1 + """
location /team/ {
    ondemand_service $team_model;
    rewrite ^/team(/.*)$ $1 break;
    proxy_pass http://$ondemand_upstream;
}
""", http_extra="map $http_x_team $team_model { red m-a; default \"\"; }")
        body = chat("m-moving")
        self.assert_answered_by(self.post("/v1/chat/completions", body), "svc-a", body)
        self.assertIn("hello from svc-a", self.get("/team/x", headers={"X-Team": "red"}).body)
        self.assertEqual(self.service_state("svc-b"), "cold")

        # controld's reload (SIGHUP) moves m-moving to svc-b: pushed to the
        # worker at once, and the next request naming it wakes svc-b.
        with open(self.controld_config) as f:
            text = f.read()
        moved = text.replace(json.dumps(models["svc-a"]), json.dumps(["m-a"])).replace(
            json.dumps(models["svc-b"]), json.dumps(["m-b", "m-moving"]))
        self.assertNotEqual(moved, text)
        with open(self.controld_config, "w") as f:
            f.write(moved)
        self.controld.signal(signal.SIGHUP)
        self.wait_model_service("m-moving", "svc-b")
        body = chat("m-moving", content="after the move")
        self.assert_answered_by(self.post("/v1/chat/completions", body), "svc-b", body)
        self.assertEqual(len(self.starts("svc-b")), 1)
        self.assertEqual(len(self.starts("svc-a")), 1, "svc-a was not asked again")

        # nginx's reload changes the map: the new worker routes red to m-b.
        old_pid = self.front_status()["pid"]
        with open(self.nginx_conf) as f:
            conf = f.read()
        with open(self.nginx_conf, "w") as f:
            f.write(conf.replace("red m-a;", "red m-b;"))
        self.reload_nginx()
        wait_until(lambda: not os.path.exists("/proc/%d" % old_pid), 15, message="the old worker gone")
        self.assertNotIn(self.front_status().get("pid"), (None, old_pid))
        result = self.get("/team/x", headers={"X-Team": "red"})
        self.assertEqual(result.status, 200, result)
        self.assertIn("hello from svc-b", result.body)


class UnreachableTest(RoutingCase):

    def test_an_empty_value_is_off_while_controld_is_unreachable_and_a_name_follows_ondemand_daemon_down(self):
        self.model_services(names=("svc-a",))
        static = free_port()
        self.start_front("""
location / {
    ondemand_service $http_x_service;
    ondemand_daemon_down closed;
    proxy_pass http://127.0.0.1:%d;
}
""" % static, http_extra="""
server { listen 127.0.0.1:%d; location / { return 200 "not woken\\n"; } }
""" % static)
        self.assertEqual(self.get("/").body, "not woken\n")
        self.controld.stop()
        wait_until(lambda: self.front_status().get("controld", {}).get("status") == "unreachable", 15,
                   message="the worker sees controld gone")
        for _ in range(3):
            result = self.get("/")
            self.assertEqual(result.status, 200, result)
            self.assertEqual(result.body, "not woken\n", "an empty value is off, controld or not")
            self.assertIsNone(result.headers.get("x-ondemand-state"))
        named = self.get("/", headers={"X-Service": "svc-a"})
        self.assertEqual(named.status, 503, named)
        self.assertEqual(named.headers.get("x-ondemand-state"), "unreachable")
        self.assertEqual(json.loads(named.body)["error"], "controld_unreachable")
        self.assertFalse(self.cli_ok("status"), "controld is really gone")


class ConfigTest(RoutingCase):

    def test_a_model_claimed_by_two_services_is_a_check_config_error_naming_both(self):
        path = self.write("clash.yaml", """\
            services:
              llm-a:
                health_url: http://127.0.0.1:9/healthz
                models: [llama3, shared]
              llm-b:
                health_url: http://127.0.0.1:9/healthz
                models: [shared]
            """)
        out = self.cli("check-config", "--config", path)
        self.assertNotEqual(out.returncode, 0)
        text = out.stdout + out.stderr
        self.assertIn("clash.yaml:7: services.llm-b.models", text)
        self.assertIn('"llm-a" and "llm-b"', text)


if __name__ == "__main__":
    unittest.main()
