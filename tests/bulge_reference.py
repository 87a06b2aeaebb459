"""The band-to-tridiagonal bulge chase written plainly in numpy, task after task in sweep order.

The specification that svdtool.linalg.bulge's kernel (which runs the same tasks in a wavefront) must match:
PLASMA's hbtype1/2/3 tasks with one reflector per column. Slow (Python loops); for small tests only.
"""

from __future__ import annotations

import numpy as np


def _house(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    alpha = float(x[0])
    xn2 = float(x[1:] @ x[1:])
    v = np.zeros_like(x)
    v[0] = 1.0
    if xn2 == 0.0:
        return v, 0.0, alpha
    beta = -float(np.copysign(np.hypot(alpha, np.sqrt(xn2)), alpha))
    v[1:] = x[1:] / (alpha - beta)
    return v, (beta - alpha) / beta, beta


def _larfy(d: np.ndarray, v: np.ndarray, tau: float) -> np.ndarray:
    return (np.eye(len(v)) - tau * np.outer(v, v)) @ d @ (np.eye(len(v)) - tau * np.outer(v, v))


def dense(band: np.ndarray) -> np.ndarray:
    """The symmetric n × n matrix of a band (b+1, n) in lower band storage."""
    b, n = band.shape[0] - 1, band.shape[1]
    a = np.zeros((n, n))
    for i in range(min(b, n - 1) + 1):
        a += np.diag(band[i, : n - i], -i) + (np.diag(band[i, : n - i], i) if i else 0)
    return a


def tridiagonalize(band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d, e) of QᵀAQ for one band (b+1, n) in lower band storage."""
    b, n = band.shape[0] - 1, band.shape[1]
    a = dense(band)
    for s in range(n - 2):
        # task (s, 0): column s
        st, ed = s + 1, min(s + b, n - 1)
        v, tau, beta = _house(a[st : ed + 1, s].copy())
        a[st : ed + 1, s] = 0.0
        a[st, s] = beta
        a[s, st : ed + 1] = a[st : ed + 1, s]
        a[st : ed + 1, st : ed + 1] = _larfy(a[st : ed + 1, st : ed + 1], v, tau)
        while ed + 1 <= n - 1:  # tasks (s, k ≥ 1): the bulge below rows st..ed
            j1, j2 = ed + 1, min(ed + b, n - 1)
            blk = a[j1 : j2 + 1, st : ed + 1]
            blk = blk - tau * np.outer(blk @ v, v)
            v, tau, beta = _house(blk[:, 0].copy())
            blk[:, 0] = 0.0
            blk[0, 0] = beta
            blk[:, 1:] -= tau * np.outer(v, v @ blk[:, 1:])
            a[j1 : j2 + 1, st : ed + 1] = blk
            a[st : ed + 1, j1 : j2 + 1] = blk.T
            a[j1 : j2 + 1, j1 : j2 + 1] = _larfy(a[j1 : j2 + 1, j1 : j2 + 1], v, tau)
            st, ed = j1, j2
    return np.diag(a).copy(), np.diag(a, -1).copy()
