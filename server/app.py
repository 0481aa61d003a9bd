"""The whole server: model manager, API server and metrics server, with their lifecycle.

Start order: the HTTP and metrics ports open first (so a taken port fails at once, before
any model work), then the model manager loads in the background while health answers
"not ready". Stop order
is the reverse of what depends on what: the API server stops accepting and drains (requests
in flight finish on the models), then the metrics server, then the models are finalized.
Before the stop, the CLI may hold a drain grace (``begin_drain_grace``): health answers "not
ready" so that load balancers take the replica out, while every request is still served.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

from evserve.gpu import EXAMPLE_REPOSITORY
from evserve.gpu.execution.device import backend_name
from evserve.gpu.model_manager import ModelManager
from evserve.server.api_server import HTTPAPIServer
from evserve.server.config import Config
from evserve.server.metrics_server import HTTPMetricsServer

log = logging.getLogger("evserve.server")


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        repositories = list(config.model_repositories) or [EXAMPLE_REPOSITORY]
        self.manager = ModelManager(repositories, config.models)
        self.api = HTTPAPIServer(config, self.manager)
        self.metrics = HTTPMetricsServer(config, self.api, self.manager) if config.allow_metrics else None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Open both ports first (a taken port fails before any model work), then load models."""
        self.api.start()
        try:
            if self.metrics is not None:
                self.metrics.start()
        except Exception:
            self.api.stop(0)
            raise
        # Everything imported so far (NumPy, uvloop, evserve) lives as long as the process: keep
        # it out of the collector's full passes, which otherwise rescan it while serving.
        gc.collect()
        gc.freeze()
        self.manager.start()
        log.info("HTTP API on %s:%d with %d loop threads; tensors on %s", self.config.http_address, self.api.port,
                 self.api.thread_count, backend_name())
        if self.api.thread_count < self.config.threads:
            log.info("%d loop threads of the %d asked for, one per usable core: more would only queue for a "
                     "core (--cap-threads-to-cores=false runs them all)", self.api.thread_count, self.config.threads)
        if self.metrics is not None:
            log.info("metrics on %s:%d/metrics", self.metrics.address, self.metrics.port)

    def begin_drain_grace(self) -> None:
        """Answer /v2/health/ready with 400 and close each connection after its reply; serve on."""
        self.api.draining = True

    def stop(self) -> None:
        """Everything shares one deadline: the process is gone within --exit-timeout-secs."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        deadline = time.monotonic() + self.config.exit_timeout
        self.api.exiting = True
        self.api.stop(self.config.exit_timeout)
        if self.metrics is not None:
            self.metrics.stop(max(0.0, min(1.0, deadline - time.monotonic())))
        self.manager.stop(max(0.0, deadline - time.monotonic()))
