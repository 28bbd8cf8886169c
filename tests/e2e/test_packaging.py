"""The Debian packages, made from this build tree by packaging/build-debs
--from-build: files, conffiles, dependencies, maintainer scripts and the
systemd unit, checked with dpkg-deb. As root with ONDEMAND_TEST_INSTALL=1 (CI
sets it) they are also installed for real, exercised (nginx -t with the module
from /etc/nginx/modules-enabled, the daemon as the controld user with its
socket reachable by www-data) and purged again, leaving the machine as it was."""
import grp
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import textwrap
import unittest

from harness import (CONTROLD, MODULE, NGINX, PYTHON, SAMPLE_SERVICE, SOURCE_DIR, OndemandTestCase, free_port,
                     http_request, wait_until)

BUILD_DIR = os.environ.get("ONDEMAND_BUILD_DIR", "")
BUILD_DEBS = os.path.join(SOURCE_DIR, "packaging", "build-debs")
CONTROLD_PKG = "controld"
MODULE_PKG = "libnginx-mod-http-ondemand"
MODULE_LINK = "/etc/nginx/modules-enabled/50-mod-http-ondemand.conf"
MODULE_CONF = "/usr/share/nginx/modules-available/mod-http-ondemand.conf"
UNIT = "/lib/systemd/system/controld.service"
SOCKET_UNIT = "/lib/systemd/system/controld.socket"
RECORDED_EXPOSURE = 8.4  # docs/OPERATIONS.md, "The systemd unit"
NO_MODULE = ("the nginx module target (ngx_http_ondemand_module) is not built in this tree, "
             "so there is no libnginx-mod-http-ondemand package")


def run(argv, check=True, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    out = subprocess.run(argv, **kw)
    if check and out.returncode != 0:
        raise AssertionError("%s exited %d:\n%s%s" % (" ".join(argv), out.returncode, out.stdout, out.stderr))
    return out


def sanitized_build():
    try:
        with open(os.path.join(BUILD_DIR, "CMakeCache.txt")) as f:
            return re.search(r"^ONDEMAND_SANITIZE:BOOL=(ON|1|TRUE)$", f.read(), re.M | re.I) is not None
    except OSError:
        return False


def installed(package):
    out = run(["dpkg-query", "-W", "-f=${Status}", package], check=False)
    return out.returncode == 0 and "installed" in out.stdout.split()


def depends_names(field):
    """'adduser, libc6 (>= 2.34), a | b' -> {'adduser', 'libc6', 'a', 'b'}"""
    names = set()
    for alternative in re.split(r"[,|]", field):
        alternative = alternative.strip()
        if alternative:
            names.add(alternative.split()[0])
    return names


def nginx_abi():
    """The nginx ABI the installed nginx provides (nginx-abi-1.22.1-7)."""
    out = run(["dpkg-query", "-W", "-f=${Provides}", "nginx"], check=False)
    m = re.search(r"nginx-abi-[^ ,]+", out.stdout)
    return m.group(0) if m else None


class PackagingTest(OndemandTestCase):
    @classmethod
    def setUpClass(cls):
        for tool in ("dpkg-deb", "cpack", "dpkg-shlibdeps"):
            if not shutil.which(tool):
                raise unittest.SkipTest("%s is not installed (scripts/install-deps installs it)" % tool)
        if not BUILD_DIR or not os.path.exists(os.path.join(BUILD_DIR, "CPackConfig.cmake")):
            raise unittest.SkipTest("ONDEMAND_BUILD_DIR has no CPackConfig.cmake: run through ctest")
        cls.out = tempfile.mkdtemp(prefix="ondemand-debs-")
        made = run([BUILD_DEBS, "--from-build", BUILD_DIR, cls.out]).stdout.split()
        cls.debs = {}
        for path in made:
            cls.debs[os.path.basename(path).split("_")[0]] = path

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.out, ignore_errors=True)

    # --- reading a .deb -----------------------------------------------------

    def deb(self, package):
        self.assertIn(package, self.debs, "build-debs made %s" % sorted(self.debs))
        return self.debs[package]

    def field(self, package, name):
        return run(["dpkg-deb", "--field", self.deb(package), name]).stdout.strip()

    def contents(self, package):
        """{path: mode string} of the files in the package ('./usr/bin/controld': '-rwxr-xr-x')."""
        files = {}
        for line in run(["dpkg-deb", "--contents", self.deb(package)]).stdout.splitlines():
            parts = line.split()
            path = parts[5]
            files[path.rstrip("/") if path != "./" else path] = parts[0]
        return files

    def control_file(self, package, name):
        out = run(["dpkg-deb", "--info", self.deb(package), name], check=False)
        return out.stdout if out.returncode == 0 else None

    def extract(self, package):
        root = self.path("root-" + package)
        run(["dpkg-deb", "-x", self.deb(package), root])
        return root

    def check_maintainer_scripts(self, package):
        info = run(["dpkg-deb", "--info", self.deb(package)]).stdout
        for script in ("postinst", "prerm", "postrm"):
            text = self.control_file(package, script)
            self.assertIsNotNone(text, "%s has no %s" % (package, script))
            self.assertTrue(text.startswith("#!/bin/sh\n"), script)
            self.assertIn("set -e", text)
            # dpkg-deb --info marks executable control members with '*'.
            self.assertRegex(info, r"\*\s+%s\s" % script)
            path = self.path("%s.%s" % (package, script))
            with open(path, "w") as f:
                f.write(text)
            run(["sh", "-n", path])

    # --- controld -----------------------------------------------------------

    def test_controld_package_files_conffiles_and_dependencies(self):
        files = self.contents(CONTROLD_PKG)
        self.assertEqual(files.get("./usr/bin/controld"), "-rwxr-xr-x")
        self.assertEqual(files.get("." + UNIT), "-rw-r--r--")
        self.assertEqual(files.get("./etc/controld/controld.yaml"), "-rw-r--r--")
        self.assertIn("./usr/share/doc/controld/OPERATIONS.md", files)
        self.assertEqual(self.control_file(CONTROLD_PKG, "conffiles").split(), ["/etc/controld/controld.yaml"])

        self.assertEqual(self.field(CONTROLD_PKG, "Package"), "controld")
        self.assertEqual(self.field(CONTROLD_PKG, "Architecture"),
                         run(["dpkg", "--print-architecture"]).stdout.strip())
        self.assertRegex(self.field(CONTROLD_PKG, "Version"), r"^\d+\.\d+\.\d+-\d+$")
        depends = depends_names(self.field(CONTROLD_PKG, "Depends"))
        for lib in ("adduser", "libc6", "libstdc++6", "libuv1", "libcurl4", "libyaml-cpp0.7", "libsystemd0"):
            self.assertIn(lib, depends)
        self.assertIn("nginx", depends_names(self.field(CONTROLD_PKG, "Recommends")))

        self.check_maintainer_scripts(CONTROLD_PKG)
        postinst = self.control_file(CONTROLD_PKG, "postinst")
        self.assertIn("adduser --system --group", postinst)
        self.assertIn("deb-systemd-helper", postinst)
        self.assertIn("rm -rf /var/lib/controld", self.control_file(CONTROLD_PKG, "postrm"))

    def test_packaged_binary_and_default_config(self):
        root = self.extract(CONTROLD_PKG)
        binary = os.path.join(root, "usr/bin/controld")
        if shutil.which("file") and not sanitized_build():
            # Stripped, and runs on its own.
            self.assertNotIn("not stripped", run(["file", binary], check=False).stdout)
        self.assertEqual(run([binary, "version"]).stdout, run([CONTROLD, "version"]).stdout)
        config = os.path.join(root, "etc/controld/controld.yaml")
        check = run([binary, "check-config", "--config", config], check=False)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.assertIn("ok (0 services)", check.stdout)
        with open(config) as f:
            text = f.read()
        self.assertRegex(text, r"(?m)^socket: /run/controld/controld\.sock$")
        self.assertRegex(text, r'(?m)^socket_mode: "0660"$')
        self.assertRegex(text, r"(?m)^socket_group: www-data$")
        self.assertRegex(text, r"(?m)^state_dir: /var/lib/controld$")

    def test_systemd_unit(self):
        root = self.extract(CONTROLD_PKG)
        with open(os.path.join(root, UNIT.lstrip("/"))) as f:
            unit = f.read()
        settings = {}
        for line in unit.splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                settings.setdefault(k, []).append(v)
        self.assertEqual(settings["Type"], ["notify"])
        self.assertEqual(settings["ExecStart"], ["/usr/bin/controld serve --config /etc/controld/controld.yaml"])
        self.assertEqual(settings["ExecStartPre"],
                         ["/usr/bin/controld check-config --config /etc/controld/controld.yaml"])
        self.assertEqual(settings["ExecReload"][-1], "/bin/kill -HUP $MAINPID")
        for key, value in (("User", "controld"), ("Group", "controld"), ("SupplementaryGroups", "www-data"),
                           ("RuntimeDirectory", "controld"), ("RuntimeDirectoryPreserve", "yes"),
                           ("StateDirectory", "controld"), ("Restart", "on-failure"), ("KillMode", "process"),
                           ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict")):
            self.assertEqual(settings.get(key), [value], key)
        # None of the settings that silently turn NoNewPrivileges on: a drop-in
        # with NoNewPrivileges=no must be enough for sudo in start commands.
        for implies_nnp in ("DynamicUser", "LockPersonality", "MemoryDenyWriteExecute", "PrivateDevices",
                            "ProtectClock", "ProtectHostname", "ProtectKernelLogs", "ProtectKernelModules",
                            "ProtectKernelTunables", "RestrictAddressFamilies", "RestrictNamespaces",
                            "RestrictRealtime", "RestrictSUIDSGID", "SystemCallArchitectures", "SystemCallFilter",
                            "SystemCallLog", "CapabilityBoundingSet"):
            self.assertNotIn(implies_nnp, settings)

        if not shutil.which("systemd-analyze"):
            return
        # systemd-analyze checks that the commands exist: point it at the
        # extracted binary.
        local = self.path("controld.service")
        with open(local, "w") as f:
            f.write(unit.replace("/usr/bin/controld", os.path.join(root, "usr/bin/controld")))
        # The socket unit the service requires, beside it.
        with open(os.path.join(root, SOCKET_UNIT.lstrip("/"))) as f:
            socket_unit = f.read()
        self.assertIn("ListenStream=/run/controld/controld.sock\n", socket_unit)
        self.assertIn("SocketGroup=www-data\n", socket_unit)
        self.assertEqual(settings["Requires"], ["controld.socket"])
        self.assertEqual(settings["WatchdogSec"], ["30s"])
        self.assertEqual(settings["EnvironmentFile"], ["-/etc/default/controld"])
        with open(self.path("controld.socket"), "w") as f:
            f.write(socket_unit)
        # (verify also runs `man` for Documentation=man:controld(8): the package's page)
        verify = run(["systemd-analyze", "verify", local, self.path("controld.socket")], check=False,
                     env=dict(os.environ, MANPATH=os.path.join(root, "usr/share/man")))
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)
        self.assertEqual((verify.stdout + verify.stderr).strip(), "")
        # The exposure score docs/OPERATIONS.md records (lower is better).
        security = run(["systemd-analyze", "security", "--offline=yes", local], check=False)
        m = re.search(r"Overall exposure level for controld.service: ([0-9.]+)", security.stdout + security.stderr)
        self.assertIsNotNone(m, security.stdout + security.stderr)
        print("systemd-analyze security --offline=yes: %s" % m.group(1))
        self.assertLessEqual(float(m.group(1)), RECORDED_EXPOSURE)

    def test_lintian_finds_no_errors_and_the_docs_a_distribution_needs_are_there(self):
        for package in (CONTROLD_PKG, MODULE_PKG):
            if package == MODULE_PKG and not MODULE:
                continue
            files = self.contents(package)
            doc = "./usr/share/doc/%s/" % package
            self.assertIn(doc + "copyright", files)
            self.assertIn(doc + "changelog.Debian.gz", files)
            maintainer = self.field(package, "Maintainer")
            self.assertNotIn("localhost", maintainer)
            self.assertRegex(maintainer, r"^[^<>]+ <[^@<>]+@[^@<>]+>$")
        files = self.contents(CONTROLD_PKG)
        self.assertIn("./usr/share/man/man8/controld.8.gz", files)
        self.assertIn("./usr/share/bash-completion/completions/controld", files)
        self.assertIn("./lib/systemd/system/controld.socket", files)
        if MODULE:
            self.assertIn("./usr/share/man/man8/ngx_http_ondemand_module.8.gz", self.contents(MODULE_PKG))
        # The man page renders (what `man controld` shows after install).
        root = self.extract(CONTROLD_PKG)
        if shutil.which("man"):
            page = run(["man", "-l", os.path.join(root, "usr/share/man/man8/controld.8.gz")],
                       env=dict(os.environ, MANPAGER="cat", MANWIDTH="80")).stdout
            self.assertIn("controld - wake services behind nginx", " ".join(page.replace("\u2010", "-").split()))
        if not shutil.which("lintian"):
            self.fail("lintian is missing (scripts/install-deps installs it)")
        for package in (CONTROLD_PKG, MODULE_PKG):
            if package == MODULE_PKG and not MODULE:
                continue
            out = run(["lintian", "--no-tag-display-limit", self.deb(package)], check=False, timeout=300)
            errors = [line for line in out.stdout.splitlines() if line.startswith("E:")]
            print("lintian %s:\n%s" % (package, out.stdout))
            self.assertEqual(errors, [], out.stdout + out.stderr)

    # --- the nginx module ---------------------------------------------------

    def test_module_package(self):
        if not MODULE:
            self.assertNotIn(MODULE_PKG, self.debs)
            self.skipTest(NO_MODULE)
        files = self.contents(MODULE_PKG)
        self.assertEqual(files.get("./usr/lib/nginx/modules/ngx_http_ondemand_module.so"), "-rw-r--r--")
        self.assertEqual(files.get("." + MODULE_CONF), "-rw-r--r--")
        root = self.extract(MODULE_PKG)
        with open(os.path.join(root, MODULE_CONF.lstrip("/"))) as f:
            self.assertEqual(f.read().strip(), "load_module modules/ngx_http_ondemand_module.so;")

        self.assertEqual(self.field(MODULE_PKG, "Package"), MODULE_PKG)
        self.assertEqual(self.field(MODULE_PKG, "Version"), self.field(CONTROLD_PKG, "Version"))
        depends = depends_names(self.field(MODULE_PKG, "Depends"))
        abi = nginx_abi()
        if abi:
            self.assertIn(abi, depends)
        else:
            self.assertTrue(any(d.startswith("nginx-abi-") for d in depends), depends)
        self.assertIn("controld", depends_names(self.field(MODULE_PKG, "Recommends")))

        self.check_maintainer_scripts(MODULE_PKG)
        postinst = self.control_file(MODULE_PKG, "postinst")
        self.assertIn("ln -sf /usr/share/nginx/modules-available/$from /etc/nginx/modules-enabled/$to", postinst)
        self.assertIn("to=50-mod-http-ondemand.conf", postinst)
        self.assertIn("dpkg-trigger --no-await nginx-reload", postinst)

        if sanitized_build():
            return  # an ASan module does not load into the system's nginx
        # The packaged (stripped) module loads into the system's nginx.
        prefix = self.path("nginx")
        os.makedirs(os.path.join(prefix, "logs"))
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(textwrap.dedent("""\
                load_module {so};
                error_log {prefix}/logs/error.log;
                pid {prefix}/logs/nginx.pid;
                events {{}}
                http {{ ondemand_control unix:/run/controld/controld.sock; }}
                """).format(so=os.path.join(root, "usr/lib/nginx/modules/ngx_http_ondemand_module.so"),
                            prefix=prefix))
        test = run([NGINX, "-t", "-p", prefix, "-c", conf], check=False)
        self.assertEqual(test.returncode, 0, test.stderr)

    # --- installing for real ------------------------------------------------

    def test_install_run_and_purge(self):
        if os.geteuid() != 0 or os.environ.get("ONDEMAND_TEST_INSTALL") != "1":
            self.skipTest("installs packages system-wide: runs as root with ONDEMAND_TEST_INSTALL=1")
        if sanitized_build():
            self.skipTest("packages from a sanitizer build cannot load into the system's nginx; "
                          "the install test runs on the normal build")
        for package in (CONTROLD_PKG, MODULE_PKG):
            if installed(package) or os.path.exists("/var/lib/dpkg/info/%s.list" % package):
                self.skipTest("%s is already on this machine: the test leaves it alone" % package)
        with_module = MODULE_PKG in self.debs
        packages = [CONTROLD_PKG] + ([MODULE_PKG] if with_module else [])
        user_existed = self._user_exists("controld")
        group_existed = self._group_exists("controld")
        run_dir_existed = os.path.exists("/run/controld")
        self.addCleanup(self._purge, packages, user_existed, group_existed, run_dir_existed)

        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = run(["dpkg", "-i"] + [self.debs[p] for p in packages], check=False, env=env)
        if install.returncode != 0:
            # Missing dependencies: let apt bring them and finish the configuration.
            run(["apt-get", "-f", "install", "-y", "-q"], env=env, timeout=300)
        for package in packages:
            self.assertTrue(installed(package), package)

        # controld: files, user, directories, unit enabled.
        self.assertTrue(os.access("/usr/bin/controld", os.X_OK))
        user = pwd.getpwnam("controld")
        self.assertLess(user.pw_uid, 1000)
        self.assertEqual(user.pw_dir, "/var/lib/controld")
        self.assertEqual(user.pw_shell, "/usr/sbin/nologin")
        self.assertEqual(grp.getgrgid(user.pw_gid).gr_name, "controld")
        st = os.stat("/var/lib/controld")
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (user.pw_uid, 0o750))
        self.assertTrue(os.path.islink("/etc/systemd/system/multi-user.target.wants/controld.service"))
        self.assertEqual(run(["/usr/bin/controld", "version"]).stdout, run([CONTROLD, "version"]).stdout)
        if shutil.which("man"):
            # What a user types after the install: the page is found on the system's MANPATH.
            env_man = {k: v for k, v in os.environ.items() if k != "MANPATH"}
            page = run(["man", "-P", "cat", "controld"], env=dict(env_man, MANWIDTH="80"), check=False)
            self.assertEqual(page.returncode, 0, page.stderr)
            self.assertIn("controld", page.stdout)
            self.assertIn("serve", page.stdout)
        check = run(["/usr/bin/controld", "check-config", "--config", "/etc/controld/controld.yaml"], check=False)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        if shutil.which("systemd-analyze"):
            verify = run(["systemd-analyze", "verify", UNIT], check=False)
            self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)

        # A service for nginx to wake, started by controld as user controld:
        # the sample service, copied where that user can read it. Editing the
        # file also makes it a modified conffile for the reinstall below.
        sample = "/var/lib/controld/sample_service.py"
        shutil.copy(SAMPLE_SERVICE, sample)
        os.chown(sample, user.pw_uid, user.pw_gid)
        sample_port = free_port()
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else PYTHON
        pidfile = "/var/lib/controld/sample.pid"
        with open("/etc/controld/controld.yaml", "a") as f:
            f.write("  sample:\n"
                    "    health_url: http://127.0.0.1:%d/healthz\n"
                    "    idle_timeout: 1h\n"
                    "    start_timeout: 30s\n"
                    "    start_command: %s\n"
                    "    stop_command: %s\n" % (
                        sample_port,
                        json.dumps([python, sample, "start", "--port", str(sample_port), "--name", "sample",
                                    "--ready-after", "0.3", "--pidfile", pidfile]),
                        json.dumps([python, sample, "stop", "--pidfile", pidfile])))
        check = run(["/usr/bin/controld", "check-config", "--config", "/etc/controld/controld.yaml"], check=False)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.assertIn("ok (1 services)", check.stdout)
        self.addCleanup(run, [python, sample, "stop", "--pidfile", pidfile], check=False)

        self._run_daemon_as_the_unit_would(user)

        with self.subTest("nginx loads the module from /etc/nginx/modules-enabled"):
            if not with_module:
                self.skipTest(NO_MODULE)
            self.assertEqual(os.readlink(MODULE_LINK), MODULE_CONF)
            test = run([NGINX, "-t"], check=False)
            self.assertEqual(test.returncode, 0, test.stderr)
            # A configuration that uses a directive of the module, with the
            # module loaded only through modules-enabled.
            conf = self.write("uses-module.conf", """\
                include /etc/nginx/modules-enabled/*.conf;
                pid {dir}/nginx.pid;
                error_log {dir}/error.log;
                events {{}}
                http {{
                    ondemand_control unix:/run/controld/controld.sock;
                }}
                """.format(dir=self.dir))
            test = run([NGINX, "-t", "-c", conf], check=False)
            self.assertEqual(test.returncode, 0, test.stderr)

            self._request_through_nginx_as_www_data(sample_port)

            # Removed (not purged), the link is set aside; reinstalled, it is back.
            run(["dpkg", "-r", MODULE_PKG], env=env)
            self.assertFalse(os.path.lexists(MODULE_LINK))
            self.assertTrue(os.path.islink(MODULE_LINK + ".removed"))
            self.assertEqual(run([NGINX, "-t"], check=False).returncode, 0)
            run(["dpkg", "-i", self.debs[MODULE_PKG]], env=env)
            self.assertEqual(os.readlink(MODULE_LINK), MODULE_CONF)
            self.assertFalse(os.path.lexists(MODULE_LINK + ".removed"))

        self._stop_daemon()

        # Reinstalling keeps the edited configuration (a conffile).
        run(["dpkg", "-i", self.debs[CONTROLD_PKG]], env=env)
        with open("/etc/controld/controld.yaml") as f:
            self.assertIn("  sample:\n", f.read())

        self._purge(packages, user_existed, group_existed, run_dir_existed)
        for path in ("/usr/bin/controld", "/etc/controld", "/var/lib/controld", UNIT, "/run/controld",
                     "/etc/systemd/system/multi-user.target.wants/controld.service",
                     "/usr/lib/nginx/modules/ngx_http_ondemand_module.so", MODULE_CONF, MODULE_LINK,
                     MODULE_LINK + ".removed"):
            self.assertFalse(os.path.lexists(path), "%s is left after purge" % path)
        self.assertEqual(self._user_exists("controld"), user_existed)
        if os.path.exists("/etc/nginx/nginx.conf"):
            test = run([NGINX, "-t"], check=False)
            self.assertEqual(test.returncode, 0, "nginx -t after purge: " + test.stderr)

    def _run_daemon_as_the_unit_would(self, user):
        """controld serve as user controld with www-data as a supplementary
        group, like the unit: the socket must end up srw-rw---- controld:www-data,
        reachable by nginx workers (www-data) and by no one else."""
        sock = "/run/controld/controld.sock"
        if os.path.isdir("/run/systemd/system"):
            # systemd runs here: postinst started the unit (unless a
            # policy-rc.d forbade it: then start it now).
            # (Restarted: the configuration changed since.)
            start = run(["systemctl", "restart", "controld"], check=False)
            self.assertEqual(start.returncode, 0, start.stderr +
                             run(["journalctl", "-u", "controld", "-n", "30", "--no-pager"], check=False).stdout)
            wait_until(lambda: os.path.exists(sock), 10, message="controld socket")
            self.daemon = None
        else:
            if not os.path.isdir("/run/controld"):
                os.mkdir("/run/controld", 0o755)
                os.chown("/run/controld", user.pw_uid, user.pw_gid)
            proc = self.spawn(["setpriv", "--reuid=controld", "--regid=controld", "--groups=www-data",
                               "/usr/bin/controld", "serve", "--config", "/etc/controld/controld.yaml"],
                              "controld.log", env=dict(os.environ, HOME="/var/lib/controld"))
            wait_until(lambda: os.path.exists(sock) or not proc.alive(), 10, message="controld socket")
            self.assertTrue(proc.alive(), proc.output())
            self.daemon = proc
        st = os.lstat(sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        self.assertEqual(pwd.getpwuid(st.st_uid).pw_name, "controld")
        self.assertEqual(grp.getgrgid(st.st_gid).gr_name, "www-data")
        as_www = run(["setpriv", "--reuid=www-data", "--regid=www-data", "--clear-groups",
                      "/usr/bin/controld", "status", "--socket", sock], check=False)
        self.assertEqual(as_www.returncode, 0, as_www.stdout + as_www.stderr)
        self.assertIn("SERVICE", as_www.stdout)
        as_nobody = run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                         "/usr/bin/controld", "status", "--socket", sock], check=False)
        self.assertEqual(as_nobody.returncode, 3, as_nobody.stdout + as_nobody.stderr)
        self.assertIn("Permission denied", as_nobody.stderr)

    def _stop_daemon(self):
        sock = "/run/controld/controld.sock"
        if self.daemon is None:
            run(["systemctl", "stop", "controld"])
        else:
            self.assertEqual(self.daemon.stop(signal.SIGTERM), 0, self.daemon.output())
        self.assertFalse(os.path.exists(sock), "controld left its socket behind")

    def _request_through_nginx_as_www_data(self, sample_port):
        """nginx as Debian runs it (workers as www-data, the module from
        modules-enabled, the default control socket) wakes the cold service
        through controld and proxies the request to it."""
        os.chmod(self.dir, 0o755)  # nginx workers (www-data) use temp paths in it
        port = free_port()
        error_log = self.path("nginx-error.log")
        conf = self.write("nginx.conf", """\
            user www-data;
            include /etc/nginx/modules-enabled/*.conf;
            worker_processes 2;
            daemon off;
            pid {dir}/nginx-run.pid;
            error_log {error_log} info;
            events {{}}
            http {{
                access_log {dir}/access.log;
                client_body_temp_path {dir}/body;
                proxy_temp_path {dir}/proxy;
                fastcgi_temp_path {dir}/fastcgi;
                uwsgi_temp_path {dir}/uwsgi;
                scgi_temp_path {dir}/scgi;
                server {{
                    listen 127.0.0.1:{port};
                    location / {{
                        ondemand_service sample;
                        ondemand_wait 20s;
                        proxy_pass http://127.0.0.1:{sample_port};
                    }}
                }}
            }}
            """.format(dir=self.dir, error_log=error_log, port=port, sample_port=sample_port))
        self._checked_logs.append(error_log)
        nginx = self.spawn([NGINX, "-c", conf], "nginx.out")
        wait_until(lambda: self._listening(port) or not nginx.alive(), 10, message="nginx listening")
        self.assertTrue(nginx.alive(), nginx.output())
        workers = run(["ps", "-o", "user=", "--ppid", str(nginx.pid)]).stdout.split()
        self.assertTrue(workers and set(workers) == {"www-data"}, workers)

        status, headers, body = http_request(port, "/", headers={"Accept": "application/json"}, timeout=30)
        self.assertEqual(status, 200, "%s %s\n%s" % (headers, body, self._controld_log()))
        self.assertIn("hello from sample", body)
        stop = run(["/usr/bin/controld", "stop", "sample", "--wait"], check=False)
        self.assertEqual(stop.returncode, 0, stop.stdout + stop.stderr)
        nginx.stop()

    @staticmethod
    def _listening(port):
        import socket
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _controld_log(self):
        if self.daemon is not None:
            return self.daemon.output()
        return run(["journalctl", "-u", "controld", "-n", "50", "--no-pager"], check=False).stdout

    # --- leaving the machine as it was ---------------------------------------

    @staticmethod
    def _user_exists(name):
        try:
            pwd.getpwnam(name)
            return True
        except KeyError:
            return False

    @staticmethod
    def _group_exists(name):
        try:
            grp.getgrnam(name)
            return True
        except KeyError:
            return False

    def _purge(self, packages, user_existed, group_existed, run_dir_existed):
        for proc in self._processes:
            proc.stop()
        present = [p for p in reversed(packages) if os.path.exists("/var/lib/dpkg/info/%s.list" % p)]
        if present:
            run(["dpkg", "--purge"] + present, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        # Debian keeps system users on purge; the test removes the one it made.
        if not user_existed and self._user_exists("controld"):
            run(["deluser", "--system", "--quiet", "controld"], check=False)
        if not group_existed and self._group_exists("controld"):
            run(["delgroup", "--system", "--quiet", "controld"], check=False)
        if not run_dir_existed and os.path.isdir("/run/controld"):
            shutil.rmtree("/run/controld", ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
