"""nginx -t with the module: every directive rejects a bad value with a
message that names it, and the example configuration is valid."""
import os
import re
import textwrap
import unittest

from harness import MODULE, SOURCE_DIR, OndemandTestCase, free_port


class ConfigTest(OndemandTestCase):

    def setUp(self):
        super().setUp()
        if not MODULE:
            self.skipTest("nginx module not built")

    def nginx_t(self, http_body, name="t"):
        prefix = self.path(name)
        for sub in ("logs", "tmp"):
            os.makedirs(os.path.join(prefix, sub), exist_ok=True)
        conf = textwrap.dedent("""\
            load_module {module};
            pid {prefix}/logs/nginx.pid;
            error_log {prefix}/logs/error.log;
            events {{}}
            http {{
                client_body_temp_path {prefix}/tmp/body;
                proxy_temp_path {prefix}/tmp/proxy;
                fastcgi_temp_path {prefix}/tmp/fastcgi;
                uwsgi_temp_path {prefix}/tmp/uwsgi;
                scgi_temp_path {prefix}/tmp/scgi;
                access_log off;
            {body}
            }}
            """).format(module=MODULE, prefix=prefix, body=textwrap.indent(textwrap.dedent(http_body), "    "))
        path = os.path.join(prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return self.nginx_test_config(path, prefix)

    def server(self, location_body, server_body=""):
        return "server { listen 127.0.0.1:%d; %s location / { %s proxy_pass http://127.0.0.1:9; } }" % (
            free_port(), server_body, location_body)

    def test_good_directives_pass(self):
        page = self.write("page.html", "<p>{{service}} is {{ state }} for {{elapsed}} ({{task_id}}) {{message}}"
                                       " {{elapsed_seconds}} {{refresh}}</p>")
        out = self.nginx_t("ondemand_control unix:%s/c.sock; ondemand_wait 90s; ondemand_mode block;\n" % self.dir +
                           self.server("ondemand_service comfy-ui_2.x; ondemand_mode page; ondemand_page %s;"
                                       " ondemand_max_waiting 5; ondemand_daemon_down closed;"
                                       " ondemand_passive $arg_probe $http_x_probe;" % page) +
                           "\nserver { listen 127.0.0.1:%d; ondemand_service a; location /s { ondemand_status; }"
                           " location /off { ondemand_service off; ondemand_passive off; return 204; }"
                           " location /v1/ { ondemand_service $ondemand_model; ondemand_model_field engine;"
                           " proxy_pass http://$ondemand_upstream; }"
                           " location /m { ondemand_service qwen2.5:14b; proxy_pass http://127.0.0.1:9; }"
                           " location = /v1/models { ondemand_models openai; }"
                           " location = /api/tags { ondemand_models ollama; }"
                           " location = /e { ondemand_events; } location /e2 { ondemand_events max=8; } }" % free_port())
        self.assertEqual(out.returncode, 0, out.stderr)

    def test_bad_values_fail_naming_the_directive(self):
        broken_page = self.write("broken.html", "<p>{{service}} {{colour}}</p>")
        cases = [
            ("ondemand_control", "ondemand_control tcp://127.0.0.1:4000;", ""),
            ("ondemand_control", "ondemand_control unix:;", ""),
            ("ondemand_control", "ondemand_control unix:/a unix:/b;", ""),
            ("ondemand_service", "", "ondemand_service 'bad name!';"),
            ("ondemand_service", "", "ondemand_service .hidden;"),
            ("ondemand_service", "", "ondemand_service a; ondemand_service b;"),
            ("ondemand_wait", "ondemand_wait soon;", ""),
            ("ondemand_wait", "", "ondemand_wait 0;"),
            ("ondemand_mode", "ondemand_mode fast;", ""),
            ("ondemand_page", "", "ondemand_page %s/missing.html;" % self.dir),
            ("ondemand_page", "", "ondemand_page %s;" % broken_page),
            ("ondemand_max_waiting", "", "ondemand_max_waiting 0;"),
            ("ondemand_max_waiting", "", "ondemand_max_waiting many;"),
            ("ondemand_daemon_down", "ondemand_daemon_down sometimes;", ""),
            ("ondemand_passive", "", "ondemand_passive;"),
            ("ondemand_passive", "", "ondemand_passive on; ondemand_passive off;"),
            ("ondemand_status", "ondemand_status;", ""),
            ("ondemand_status", "", "ondemand_status on;"),
            ("ondemand_model_field", "", "ondemand_model_field;"),
            ("ondemand_model_field", "", "ondemand_model_field '';"),
            ("ondemand_model_field", "ondemand_model_field a;", "ondemand_model_field a; ondemand_model_field b;"),
            ("ondemand_models", "", "ondemand_models;"),
            ("ondemand_models", "", "ondemand_models anthropic;"),
            ("ondemand_events", "ondemand_events;", ""),
            ("ondemand_events", "", "ondemand_events max=0;"),
            ("ondemand_events", "", "ondemand_events max=many;"),
            ("ondemand_events", "", "ondemand_events 5;"),
            ("ondemand_events", "", "ondemand_events max=1000000;"),
            ("ondemand_events", "", "ondemand_events; ondemand_events;"),
            ("ondemand_events", "", "ondemand_events max=1 max=2;"),
        ]
        for i, (directive, http_level, location_level) in enumerate(cases):
            with self.subTest(directive=directive, config=http_level + location_level):
                out = self.nginx_t(http_level + "\n" + self.server(location_level), name="case%d" % i)
                self.assertNotEqual(out.returncode, 0, "nginx -t accepted it")
                self.assertIn('"%s" directive' % directive, out.stderr)
                self.assertIn("[emerg]", out.stderr)
        # The messages say what is wrong, not just that something is.
        out = self.nginx_t("ondemand_mode fast;\n" + self.server(""), name="mode")
        self.assertIn('invalid value "fast": use one of auto, block, page, reject', out.stderr)
        out = self.nginx_t(self.server("ondemand_page %s;" % broken_page), name="page")
        self.assertIn('unknown placeholder "{{colour}}"', out.stderr)
        out = self.nginx_t(self.server("ondemand_events max=0;"), name="events")
        self.assertIn('"ondemand_events" directive has an invalid value "max=0": use max=N', out.stderr)

    def test_the_example_configurations_pass_nginx_t(self):
        examples = sorted(f for f in os.listdir(os.path.join(SOURCE_DIR, "conf")) if f.endswith(".conf"))
        self.assertIn("nginx-models.conf", examples)
        for name in examples:
            with self.subTest(example=name):
                with open(os.path.join(SOURCE_DIR, "conf", name)) as f:
                    example = f.read()
                # Only what cannot work in a test sandbox changes: ports and log paths.
                example = re.sub(r"listen 80;", "listen 127.0.0.1:%d;" % free_port(), example)
                example = example.replace("/var/log/nginx/", self.dir + "/")
                out = self.nginx_t(example, name="example-" + name)
                self.assertEqual(out.returncode, 0, out.stderr)


if __name__ == "__main__":
    unittest.main()
