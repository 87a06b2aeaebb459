"""Per-matrix work in one process or across the ranks of a ``torchrun`` job: the process world
(:mod:`~svdtool.engine.world`), the LPT work plan (:mod:`~svdtool.engine.plan`), this rank's share
(:mod:`~svdtool.engine.work`) and the local pool of workers (:mod:`~svdtool.engine.pool`,
:mod:`~svdtool.engine.band_pool`), fed from a checkpoint or from tensors in memory (:mod:`~svdtool.engine.memory`)."""
