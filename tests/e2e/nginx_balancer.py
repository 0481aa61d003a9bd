"""A real nginx in front of evserve replicas, started by a test without root.

Everything nginx writes (pid, logs, temporary files) goes to the test's folder; ``-p``/``-c``
point it there, so no system path is touched and any user can run it. Debian installs the
binary as /usr/sbin/nginx, which is not on a normal user's PATH, so that place is tried too
(``EVSERVE_NGINX`` names another).

The configuration is the one a deployment would use for evserve, with passive health checks:

- ``max_fails=1 fail_timeout=2s``: one failed attempt (a refused connect, a reset) takes a
  replica out for 2 s, after which nginx tries it again; nothing polls it in between.
- ``proxy_next_upstream error timeout http_502 http_503``, 3 tries: a request is moved to the
  next replica on those failures, but nginx never moves a POST it has already sent (every
  inference is a POST) unless ``non_idempotent`` is added. That is kept off on purpose (see
  test_rolling_restart.py): a refused or reset connect is retried, a request a replica may
  have run is not.
- ``keepalive`` connections to the replicas (HTTP/1.1, no Connection header passed on), idle
  ones closed by nginx after 20 s, before evserve's own 30 s (--http-keepalive-timeout) would
  close them under a request that nginx is sending.
- ``proxy_buffering off``, so generate_stream events pass as they come.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.evserve_process import free_port, http_status

_PLACES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")

CONFIG = """\
{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format upstreams '$msec $status "$request" upstream=$upstream_addr status=$upstream_status';
    access_log {dir}/access.log upstreams;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream evserve {{
{servers}
        keepalive 32;
        keepalive_timeout 20s;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 64m;
        location / {{
            proxy_pass http://evserve;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            proxy_buffering off;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    """The nginx binary: $EVSERVE_NGINX, then PATH, then where Debian and source builds put it."""
    named = os.environ.get("EVSERVE_NGINX")
    if named:
        return named
    found = shutil.which("nginx")
    if found:
        return found
    return next((place for place in _PLACES if os.access(place, os.X_OK)), None)


class NginxBalancer:
    """nginx balancing over ``upstreams`` (ports on 127.0.0.1), configured and run in ``folder``."""

    def __init__(self, binary: str, folder: Path, upstreams: list[int]) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" for port in upstreams)
        # As root, nginx would switch its worker to an unprivileged user that cannot reach this folder.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        self.config = folder / "nginx.conf"
        self.config.write_text(CONFIG.format(user=user, dir=folder, servers=servers, port=self.port))
        self._output = (folder / "nginx.out").open("wb")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> NginxBalancer:
        self.proc = subprocess.Popen([self.binary, "-p", str(self.folder), "-c", str(self.config)],
                                     stdout=self._output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.errors()}")
            try:
                if http_status(self.port, "GET", "/v2/health/ready") == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nginx did not answer through to a ready replica:\n{self.errors()}")

    def errors(self) -> str:
        """What nginx logged: its start-up output and the error log."""
        texts = []
        for name in ("nginx.out", "error.log"):
            path = self.folder / name
            if path.exists():
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def error_counts(self) -> dict[str, int]:
        """How often each kind of upstream failure was logged (a refused connect, a reset, an early close)."""
        text = (self.folder / "error.log").read_text(errors="replace") if (self.folder / "error.log").exists() else ""
        kinds = {
            "connect refused": r"connect\(\) failed \(111",
            "reset by replica": r"\(104: Connection reset by peer\)",
            "closed by replica": r"upstream prematurely closed connection",
            "no live upstreams": r"no live upstreams",
        }
        return {kind: len(re.findall(pattern, text)) for kind, pattern in kinds.items()}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # nginx's graceful stop
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._output.close()
