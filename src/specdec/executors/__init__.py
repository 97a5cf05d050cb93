"""Executors, a plugin kind: where a batch's jobs run (``local`` subprocesses, ``ray`` tasks).

Each executor is an entry point of ``specdec.executors`` and satisfies
:class:`specdec.interfaces.Executor`.  A batch (``specdec batch``,
``specdec study``) turns each item, its scoring pass and its sampled checks
into :class:`specdec.interfaces.Job` records; the executor runs their commands
and reports as each starts and ends, and the batch records the outcomes in
``batch.json`` the same way whichever executor ran them (see docs/scaling.md).
Ray is imported only by :mod:`specdec.executors.ray_cluster`, and only when
that executor connects.
"""

from __future__ import annotations

from specdec.records import EngineConfig


def engine_gpus(engine: EngineConfig) -> int:
    """The GPUs one run of ``engine`` occupies: tensor x pipeline parallel size.

    0 for a server it does not launch (the server's own GPUs are not the
    job's), nor for an engine whose vLLM places its workers with Ray itself
    (``distributed_executor_backend: ray``): it asks the cluster for them, and
    a job holding them too would wait for itself.
    """
    if engine.backend == "server" and not engine.launch:
        return 0
    if engine.distributed_executor_backend == "ray":
        return 0
    return engine.tensor_parallel_size * engine.pipeline_parallel_size
