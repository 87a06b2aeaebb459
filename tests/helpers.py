"""Test helpers: one ``assert_close`` with named tolerances, and deterministic matrices."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Named tolerances (rtol, atol). Pick by what is being compared, never ad hoc.
TOL: dict[str, tuple[float, float]] = {
    "exact64": (1e-12, 0.0),  # float64 against float64 computed differently
    "reordered64": (0.0, 1e-11),  # float64 similarities of O(1) entries, same steps in another order
    "sigma": (1e-9, 0.0),  # svdtool σ against scipy float64 σ (relative, every value)
    "metric": (1e-9, 1e-12),  # derived metrics against hand computations
    "fp32": (1e-5, 1e-6),  # float32 arithmetic
    "fp32_logits": (1e-4, 1e-4),  # model outputs through float32 layers
    "bf16": (1e-2, 1e-2),
    "ww": (1e-6, 1e-9),  # WeightWatcher's columns (its scipy σ) against ours: same fit, σ agreeing to ~1e-12
    "snr": (1e-6, 0.0),  # Spectrum SNR from svdtool σ against the formula on numpy float64 σ (the bound)
    "fraction4": (0.0, 5e-5),  # fractions that must agree to 4 decimals
    "svd_rel": (0.0, 1e-8),  # relative Frobenius distance of float64 truncated-SVD parts from the reference
    "orthonormal": (0.0, 1e-12),  # max |QᵀQ − I| of float64 singular vectors
    "eig64_backward": (0.0, 64 * 2.220446049250313e-16),  # eigenvalues / λ_max after float64 similarities
    "factor_rel": (0.0, 2e-6),  # relative Frobenius distance of products of float32-stored factors
    "grad_fp32": (0.0, 1e-5),  # float32-accumulated gradients / max|G_ref|, against a float64 backward
    "distributed": (0.0, 1e-6),  # float32 sums split over ranks against one process, / max|G| (issue 14)
    "fp32_svd": (0.0, 1e-4),  # relative distance of float32 LAPACK singular vectors from float64 (ε₃₂·σ₁/gap)
}


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close(actual: Any, expected: Any, tol: str, msg: str = "") -> None:
    """|actual − expected| ≤ atol + rtol·|expected|, elementwise, with the tolerance named ``tol``."""
    rtol, atol = TOL[tol]
    a, e = _np(actual), _np(expected)
    assert a.shape == e.shape, f"{msg} shape {a.shape} != {e.shape}"
    both_inf = np.isinf(a) & np.isinf(e) & (np.sign(a) == np.sign(e))
    err = np.where(both_inf, 0.0, np.abs(a - e))
    bound = atol + rtol * np.abs(np.where(both_inf, 0.0, e))
    bad = err > bound
    if bad.any():
        i = np.unravel_index(np.argmax(err - bound), a.shape) if a.ndim else ()
        raise AssertionError(
            f"{msg} not close under {tol!r} (rtol={rtol}, atol={atol}): {int(bad.sum())} of {a.size} differ; "
            f"worst at {i}: {a[i]!r} vs {e[i]!r}"
        )


def matrix_with_spectrum(shape: tuple[int, int], sigma: np.ndarray, seed: int) -> np.ndarray:
    """U·diag(σ)·Vᵀ with random orthonormal U (rows×k), V (cols×k), k = min(shape), in float64."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    k = min(shape)
    u, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    return (u * sigma) @ v.T


def run_cli(args: list[str], capsys: Any) -> tuple[int, str, str]:
    """Run ``svdtool ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from svdtool.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
