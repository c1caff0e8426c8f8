"""Training: generic trainer for every system.

Modules: ``optim`` (optimizer/schedules/decay masks), ``state`` (TrainState, EMA, shardings), ``step``
(train step with micro-batching and the non-finite guard), ``checkpoint`` (Orbax), ``preemption``
(SIGTERM), ``observe`` (metrics, JSONL/TensorBoard, MFU), ``config`` (trainer defaults + validation),
``loop`` (``train(config, workdir)``), ``toy`` (tiny task for tests and smoke runs).
"""
