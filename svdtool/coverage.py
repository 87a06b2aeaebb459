"""Gradient coverage and batch-size similarity statistics (LoRA-GA paper, appendix and §4). Pure math.

For a gradient G (out, in) with singular values σ₁ ≥ σ₂ ≥ …:

* ``coverage_k(G) = Σ_{i≤k} σᵢ² / ‖G‖_F²``, the share of G's energy in its best rank-k approximation.
  LoRA-GA's ArB2r init makes the first LoRA step follow the top-2r part of G, so k = r and k = 2r are
  reported for each adapter rank r. The paper tabulates the mean and minimum over layers.
* svdtool's own definitions (the paper's exact formulas were not available), comparing a small-batch
  gradient G_b with a reference-batch gradient G_ref entry by entry:
  - ``sign similarity``: the fraction of entries with sign(G_b) = sign(G_ref);
  - ``magnitude similarity``: the fraction of entries with 0.1 ≤ |G_b|/|G_ref| ≤ 10, evaluated as
    0.1·|G_ref| ≤ |G_b| ≤ 10·|G_ref| (two zeros count as similar).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from svdtool.results.coverage import CoverageGroup, MatrixCoverage, Similarity
from svdtool.spectrum import group_by

if TYPE_CHECKING:
    import torch

SIGN_DEFINITION = "svdtool's definition: fraction of entries with sign(G_b) == sign(G_ref)"
MAGNITUDE_DEFINITION = "svdtool's definition: fraction of entries with 0.1 <= |G_b|/|G_ref| <= 10 (0/0 counts)"
COVERAGE_DEFINITION = "coverage_k = sum_{i<=k} sigma_i^2 / ||G||_F^2 (float64)"
#: Singular values kept in the JSON per matrix (all of them go to the sidecar).
TOP_IN_JSON = 16


def coverage_levels(ranks: Iterable[int]) -> list[int]:
    """The k values reported: r and 2r for every rank, ascending, unique."""
    return sorted({k for r in ranks for k in (r, 2 * r)})


def coverage_from_sigma(sigma: np.ndarray, frob_sq: float, ks: Iterable[int]) -> dict[str, float]:
    """coverage_k for each k from float64 singular values (descending) and ‖G‖_F² (k past the end → all)."""
    cum = np.cumsum(np.asarray(sigma, dtype=np.float64) ** 2)
    out = {}
    for k in ks:
        if frob_sq <= 0 or cum.size == 0:
            out[str(k)] = 0.0
        else:
            out[str(k)] = float(min(cum[min(k, cum.size) - 1] / frob_sq, 1.0))
    return out


def frobenius_sq(g: torch.Tensor, device: torch.device) -> float:
    """‖G‖_F² in float64."""
    import torch

    return float(torch.linalg.vector_norm(g.to(device=device, dtype=torch.float64)).item() ** 2)


def matrix_coverage(
    sigma: np.ndarray,
    frob_sq: float,
    *,
    name: str,
    module_type: str,
    layer: int | None,
    shape: tuple[int, int],
    ranks: list[int],
) -> MatrixCoverage:
    """Coverage statistics of one gradient G (out, in) from all its singular values (float64, descending,
    e.g. :func:`svdtool.linalg.exact.singular_values`) and ‖G‖_F² (:func:`frobenius_sq`, from G itself)."""
    return MatrixCoverage(
        name=name,
        module_type=module_type,
        layer=layer,
        shape=[int(shape[0]), int(shape[1])],
        frobenius=float(np.sqrt(frob_sq)),
        top_singular_values=[float(s) for s in sigma[:TOP_IN_JSON]],
        coverage=coverage_from_sigma(sigma, frob_sq, coverage_levels(ranks)),
    )


def similarity(g_b: torch.Tensor, g_ref: torch.Tensor, batch_size: int) -> Similarity:
    """Sign and magnitude similarity of G_b to G_ref (see the module docstring), exact counts."""
    import torch

    a, b = g_b.to(torch.float64), g_ref.to(g_b.device, torch.float64)
    n = a.numel()
    same_sign = int((torch.sign(a) == torch.sign(b)).sum().item())
    aa, bb = a.abs(), b.abs()
    close = int(((aa >= 0.1 * bb) & (aa <= 10.0 * bb)).sum().item())
    return Similarity(batch_size=batch_size, sign=same_sign / n, magnitude=close / n)


def summarize(
    matrices: list[MatrixCoverage], key: str, ranks: list[int], order: Callable[[str], Any] | None = None
) -> list[CoverageGroup]:
    """Mean and minimum coverage per group (``module_type`` or ``layer``), plus an ``all`` row first."""
    ks = coverage_levels(ranks)
    ordered = [("all", matrices), *group_by(matrices, key, order, missing="-")]
    return [_group(k, ms, ks) for k, ms in ordered if ms]


def _group(key: str, ms: list[MatrixCoverage], ks: list[int]) -> CoverageGroup:
    cov = {str(k): np.array([m.coverage[str(k)] for m in ms]) for k in ks}
    sizes = sorted({s.batch_size for m in ms for s in m.similarity})
    sign = {str(b): float(np.mean([s.sign for m in ms for s in m.similarity if s.batch_size == b])) for b in sizes}
    mag = {str(b): float(np.mean([s.magnitude for m in ms for s in m.similarity if s.batch_size == b])) for b in sizes}
    return CoverageGroup(
        key=key,
        matrices=len(ms),
        frobenius_mean=float(np.mean([m.frobenius for m in ms])),
        coverage_mean={k: float(v.mean()) for k, v in cov.items()},
        coverage_min={k: float(v.min()) for k, v in cov.items()},
        sign_similarity_mean=sign,
        magnitude_similarity_mean=mag,
    )
