"""Running models: the job contract, instance workers, batching, statistics, device contexts.

- :mod:`.contract` — :class:`~.contract.ExecRequest` (the job ``server/`` submits, finished
  exactly once), :class:`~.contract.ServedModel` and :class:`~.contract.ModelInstance`.
- :mod:`.worker` — one thread and one bounded queue per model instance.
- :mod:`.batching` — dynamic batching: how many queued requests one ``execute`` takes.
- :mod:`.stats` — Triton's per-version statistics.
- :mod:`.version` — one loaded version: its workers, routing and draining.
- :mod:`.device` — CuPy device and stream per GPU worker; NumPy without one.
"""
