"""The numerical kernels: pure math on tensors, no I/O, nothing printed.

* :mod:`~svdtool.linalg.exact`: exact singular values of one matrix (float64 Gram, refined small values).
* :mod:`~svdtool.linalg.band`, :mod:`~svdtool.linalg.bulge`, :mod:`~svdtool.linalg.bulge_kernel`: the
  two-stage symmetric eigen-solve (dense → band → tridiagonal) on the CPU or a GPU, with its Triton kernel.
* :mod:`~svdtool.linalg.factorize`, :mod:`~svdtool.linalg.subspace`: certified top-r / bottom-r SVDs,
  randomized SVD and the Chebyshev-filtered subspace iteration behind them.
* :mod:`~svdtool.linalg.sketch`: seeded range/co-range sketches of a gradient and its recovered factors.
* :mod:`~svdtool.linalg.cuda_graphs`: capturing and replaying CUDA graphs safely (one capture at a time).

Everything above this package (engine, gradients, methods, commands) calls into it; it imports nothing
from them.
"""
