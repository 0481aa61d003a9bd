"""The model manager's settings, in one frozen object (Triton's model flags).

The CLI builds this object from Triton's flags and the server's
:class:`~evserve.server.config.Config` carries it as ``models``; the manager takes it whole. A
new setting is one field here and one flag in the CLI, not a keyword copied through layers.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("none", "poll", "explicit")
ISOLATIONS = ("thread", "process")


@dataclass(frozen=True, slots=True)
class ModelManagerOptions:
    """How models are found, loaded, queued and retired.

    ``control_mode`` is none|poll|explicit; ``startup_models`` (``--load-model``, explicit
    only, ``*`` = all); ``load_thread_count`` is the number of parallel startup loads and the
    control executor's size; ``exit_on_error`` is kept for the CLI, which exits when the
    manager's ``startup_errors`` is not empty; ``queue_capacity`` bounds each instance's queue
    (a config's ``max_queue_size`` lowers it); ``unload_timeout`` bounds each drain.
    """

    control_mode: str = "none"
    startup_models: tuple[str, ...] = ()
    poll_secs: float = 15.0
    load_thread_count: int = 4
    strict_readiness: bool = True
    exit_on_error: bool = True
    model_config_name: str | None = None
    disable_auto_complete: bool = False
    queue_capacity: int = 1024
    unload_timeout: float = 30.0
    # Where python-backend instances run by default: "thread" (in the server) or "process" (a
    # child each); a model's EVSERVE_MODEL_ISOLATION parameter overrides it.
    isolation: str = "thread"
    # --metrics-config summary_latencies=true: keep recent latencies for Triton's *_summary_us families.
    latency_summaries: bool = False
    # --cache-config local,size=N: the response cache's bytes (0: no cache; response_cache models run uncached).
    response_cache_bytes: int = 0

    def __post_init__(self) -> None:
        # A list given for the model names is kept as a tuple, so the options stay immutable.
        object.__setattr__(self, "startup_models", tuple(self.startup_models))
        # The messages name Triton's flags: the CLI shows them as they are.
        if self.control_mode not in MODES:
            raise ValueError(f"invalid --model-control-mode '{self.control_mode}': expected none, explicit or poll")
        if self.startup_models and self.control_mode != "explicit":
            raise ValueError("--load-model requires --model-control-mode=explicit")
        if "*" in self.startup_models and len(self.startup_models) > 1:
            raise ValueError("--load-model=* must be the only --load-model")
        if self.load_thread_count < 1:
            raise ValueError("--model-load-thread-count must be at least 1")
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"invalid --model-isolation '{self.isolation}': expected thread or process")
        if self.queue_capacity < 1:
            raise ValueError("--max-queue-size must be at least 1")
        if self.response_cache_bytes < 0:
            raise ValueError("--cache-config local,size must not be negative")
        if self.control_mode == "poll" and self.poll_secs <= 0:
            raise ValueError("--repository-poll-secs must be greater than 0 in poll mode")
