"""Triton's python backend, in-process: ``pb_utils`` and the adapter that runs ``model.py``.

- :mod:`.pb_utils` is what models import as ``triton_python_backend_utils``.
- :mod:`.importer` imports a version's ``model.py`` privately (many models, one process).
- :mod:`.model` runs ``auto_complete_config`` and creates instances (``initialize``).
- :mod:`.instance` runs ``execute`` and enforces Triton's contract on its result.
- :mod:`.reply` turns one request's responses into its single answer.
- :mod:`.async_runner` is the per-instance loop for ``async def`` models.
"""
