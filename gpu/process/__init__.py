"""Model instances in child processes: a crashing or CPU-bound model never stalls or kills the server.

The worker that owns an instance drives a :class:`~.instance.ProcessInstance`, a proxy that
stands behind the same ``ModelInstance`` contract as an in-process instance; the model runs in
``python -m evserve.gpu.process.child``. Headers travel as msgpack frames over a socketpair
(:mod:`.frames`); tensor bytes travel through a shared-memory arena (:mod:`.arena`,
:mod:`.tensors`).
"""
