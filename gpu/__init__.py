"""evserve.gpu: the execution engine, always off the loop threads.

- :mod:`.repository` — what is on disk: the repository scan and ``config.pbtxt`` (Triton's rules).
- :mod:`.python_backend` — Triton's python-backend API (``pb_utils``) and the adapter that runs ``model.py``.
- :mod:`.execution` — the job contract ``server/`` submits, instance workers, batching,
  statistics, per-version state and device contexts.
- :mod:`.model_manager` (with :mod:`.model_loader`, :mod:`.model_control`, :mod:`.model_records`
  and :mod:`.options`) — which models exist, their states, loading, unloading and reloads.

``server/`` talks to the engine only through :mod:`.execution.contract` and the manager.
"""

from __future__ import annotations

from pathlib import Path

# The bundled repository served when no --model-repository is given (installed as package data).
EXAMPLE_REPOSITORY = str(Path(__file__).resolve().parent / "example_repository")
