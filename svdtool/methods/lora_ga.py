"""LoRA-GA: Low-Rank Adaptation with Gradient Approximation (Wang, Yu, Li; NeurIPS 2024, arXiv 2407.05000).

Inputs: the weight W (out, in) and the full-model gradient G (out, in) of the loss on calibration data
(:mod:`svdtool.gradients`). With G = U S Vᵀ, rank r and s = α/r (α/√r with rsLoRA):

Reference convention (``Outsider565/LoRA-GA``, ``peft/src/peft/tuners/lora/layer.py::lora_ga_init``):

    U, S, V = svd_lowrank(G, q = min(4r, min(out, in)), niter = 4)   (seeded; or an exact SVD)
    ArB2r (default):  A = V[:, :r]ᵀ (r, in),   B = U[:, r:2r] (out, r)
    A2rBr:            A = V[:, r:2r]ᵀ,         B = U[:, :r]
    ArBr:             A = V[:, 1:2r:2]ᵀ,       B = U[:, 0:2r:2]
    random:           a seeded random split of the indices 0 … 2r−1 into A's r and B's r
    stable scale:     A ← A·c,  B ← B·c,  c = d_out^{1/4}/√γ  (γ = 16), d_out = out_features
    W_res = W − s·B·A   (float64, from the factors exactly as stored)

so that one SGD step on (A, B) moves W along −λs²(BBᵀG + GAᵀA) = −λs²c²·G_(2r) for ArB2r.

``convention="peft"`` reproduces PEFT ≥ 0.19's ``lora_ga`` (``LoraLayer.lora_ga_init``): B carries the
singular values (B = U[:, idx_B]·diag(S[idx_B])), only B is multiplied by c, with c computed from
``weight.shape[0]`` *as stored* (d_in for GPT-2 Conv1D, a PEFT quirk kept here for equality), A and B are
rounded to the base dtype *before* the offset W − s·B·A is formed in float32, and ``random`` uses one
``randperm`` draw for both factors. Given the same gradient and seed it equals PEFT's init.

Options in ``InitOptions.extra``: ``direction`` (ArB2r), ``gamma`` (16), ``convention`` (reference | peft),
``svd`` (randomized | exact), ``oversample`` (q − 2r, default 2r so q = 4r), ``niter`` (4), ``seed`` (0).
The gradient may also come as its top factors (:class:`svdtool.linalg.sketch.LowRankGradient`, sketch mode).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.linalg import factorize
from svdtool.linalg.sketch import LowRankGradient
from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec

if TYPE_CHECKING:
    import torch

DIRECTIONS = ("ArB2r", "A2rBr", "ArBr", "random")
CONVENTIONS = ("reference", "peft")
GAMMA = 16.0
NITER = 4
_GLOBAL_RNG = threading.Lock()  # held while the global generators are reseeded and drawn from


def seeded_svd_lowrank(g: torch.Tensor, q: int, niter: int, seed: int, r: int) -> tuple[torch.Tensor, ...]:
    """``torch.svd_lowrank(g, q, niter)`` with the global RNGs seeded to ``seed`` and restored afterwards.

    Exactly what the reference (and PEFT) run, made reproducible: ``torch.manual_seed(seed)`` before the
    call gives the same sketch. Returns (U, S, V) as ``svd_lowrank`` does (V, not Vᵀ), plus the
    ``torch.randperm(2r)`` that PEFT's ``random`` direction draws next from the same generator.
    """
    import torch

    devices = [g.device] if g.device.type == "cuda" else []
    # svd_lowrank draws from the global generators: no other thread may reseed or draw from them meanwhile
    # (init's stream runs beside the gradient passes, whose reduce calls this).
    with _GLOBAL_RNG, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(g, q=q, niter=niter)
        perm = torch.randperm(2 * r)
    return u, s, v, perm


def seeded_randperm(n: int, seed: int) -> torch.Tensor:
    """``torch.manual_seed(seed); torch.randperm(n)`` without touching the global generator (a private one
    seeded alike draws the same permutation), so it is safe beside another thread's seeded draws."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def decompose(
    gradient: torch.Tensor | LowRankGradient, r: int, extra: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The top-2r singular triplets of G: U (out, 2r), S (2r,), Vh (2r, in), float32, and what computed them."""
    import torch

    if isinstance(gradient, LowRankGradient):
        if gradient.rank < 2 * r:
            raise SvdtoolError(
                f"the gradient sketch holds {gradient.rank} singular triplets; rank {r} needs {2 * r} "
                "(re-estimate with a larger rank, or use --gradient exact)"
            )
        meta: dict[str, Any] = {"algorithm": gradient.source, "perm": seeded_randperm(2 * r, int(extra.get("seed", 0)))}
        return gradient.U[:, : 2 * r].float(), gradient.S[: 2 * r].float(), gradient.Vh[: 2 * r].float(), meta
    g = gradient.to(torch.float32)
    m, n = g.shape
    if 2 * r > min(m, n):
        raise SvdtoolError(f"LoRA-GA rank {r} needs 2r = {2 * r} ≤ min(out, in) = {min(m, n)} of a {m}×{n} gradient")
    svd = extra.get("svd", "randomized")
    seed = int(extra.get("seed", 0))
    if svd == "exact":
        u, s, vh = factorize.svd64(g)
        meta = {"algorithm": "svd64", "perm": seeded_randperm(2 * r, seed)}
        return u[:, : 2 * r].float(), s[: 2 * r].float(), vh[: 2 * r].float(), meta
    if svd != "randomized":
        raise SvdtoolError(f"--svd {svd!r}: expected randomized or exact")
    q = min(2 * r + int(extra.get("oversample", 2 * r)), m, n)
    niter = int(extra.get("niter", NITER))
    u, s, v, perm = seeded_svd_lowrank(g, q, niter, seed, r)
    meta = {"algorithm": "randomized", "q": q, "niter": niter, "seed": seed, "perm": perm}
    return u[:, : 2 * r], s[: 2 * r], v[:, : 2 * r].T, meta


def reducer(r: int, extra: dict[str, Any]) -> Callable[[str, torch.Tensor], LowRankGradient]:
    """``reduce(name, G)`` for gradient estimation: G's top-2r triplets exactly as :func:`lora_ga` computes them.

    Run while G is still on the device, it lets ``init`` keep 2r triplets per target instead of every G.
    """

    def reduce(name: str, g: torch.Tensor) -> LowRankGradient:
        u, s, vh, meta = decompose(g, r, extra)
        return LowRankGradient(u, s, vh, str(meta["algorithm"]))

    return reduce


def split(r: int, direction: str, seed: int) -> tuple[list[int], list[int]]:
    """Indices (into the top 2r triplets) that A and B take, as the reference assigns them."""
    if direction == "ArB2r":
        return list(range(r)), list(range(r, 2 * r))
    if direction == "A2rBr":
        return list(range(r, 2 * r)), list(range(r))
    if direction == "ArBr":
        return list(range(1, 2 * r, 2)), list(range(0, 2 * r, 2))
    if direction == "random":
        order = random.Random(seed).sample(range(2 * r), 2 * r)
        return order[:r], order[r:]
    raise SvdtoolError(f"--direction {direction!r}: expected one of {', '.join(DIRECTIONS)}")


def _peft(
    w: torch.Tensor,
    u: torch.Tensor,
    s: torch.Tensor,
    vh: torch.Tensor,
    opts: InitOptions,
    direction: str,
    gamma: float,
    d_out_peft: int,
    base_dtype: torch.dtype,
    seed: int,
    perm: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], list[int]]:
    """PEFT's ``lora_ga_init`` arithmetic (see the module docstring)."""
    import torch

    r = opts.rank
    if direction == "random":
        # PEFT takes the first r of one randperm(2r), drawn right after svd_lowrank, for both A and B.
        idx = perm[:r].tolist()
        ia, ib = idx, idx
    else:
        ia, ib = split(r, direction, seed)
    a = vh[ia]  # (r, in)
    b = u[:, ib] @ torch.diag(s[ib])  # (out, r)
    b = b * (d_out_peft**0.25 / gamma**0.5)
    a, b = a.to(base_dtype).float(), b.to(base_dtype).float()  # PEFT rounds first, then forms the offset
    residual = (w.to(torch.float32) - opts.scaling * (b @ a)).to(w.dtype)
    return a.contiguous(), b.contiguous(), residual, ia, ib


def lora_ga(w: torch.Tensor, opts: InitOptions, *, gradient: Any = None, **kwargs: Any) -> LoraInit:
    """LoRA-GA init of one weight W (out, in) from its gradient G (out, in) or G's top factors.

    Keyword extras from the caller: ``transposed`` (the weight is stored (in, out), GPT-2 Conv1D) and
    ``source_dtype`` (the stored dtype), used only by ``convention="peft"``.
    """
    import torch

    if gradient is None:
        raise SvdtoolError("LoRA-GA needs the gradient of every target (pass --calib or --grad-cache)")
    extra = opts.extra
    r = opts.rank
    direction = str(extra.get("direction", "ArB2r"))
    convention = str(extra.get("convention", "reference"))
    gamma = float(extra.get("gamma", GAMMA))
    seed = int(extra.get("seed", 0))
    if convention not in CONVENTIONS:
        raise SvdtoolError(f"--convention {convention!r}: expected reference or peft")
    if direction not in DIRECTIONS:
        raise SvdtoolError(f"--direction {direction!r}: expected one of {', '.join(DIRECTIONS)}")
    if not gamma > 0:
        raise SvdtoolError(f"--gamma {gamma}: must be positive")
    shape = gradient.shape if isinstance(gradient, LowRankGradient) else tuple(gradient.shape)
    if tuple(shape) != tuple(w.shape):
        raise SvdtoolError(f"gradient shape {list(shape)} does not match the weight's {list(w.shape)}")
    gradient = gradient.to(w.device)
    u, s, vh, meta = decompose(gradient, r, extra)
    perm = meta.pop("perm")
    d_out = int(w.shape[0])
    if convention == "peft":
        transposed = bool(kwargs.get("transposed", False))
        d_out_peft = int(w.shape[1]) if transposed else d_out  # PEFT reads weight.shape[0] as stored
        base_dtype = kwargs.get("source_dtype") or w.dtype
        a, b, residual, ia, ib = _peft(w, u, s, vh, opts, direction, gamma, d_out_peft, base_dtype, seed, perm)
        c = d_out_peft**0.25 / gamma**0.5
    else:
        ia, ib = split(r, direction, seed)
        c = d_out**0.25 / gamma**0.5
        a = (vh[ia] * c).to(torch.float32).contiguous()  # (r, in)
        b = (u[:, ib] * c).to(torch.float32).contiguous()  # (out, r)
        residual = factorize.subtract_adapter(w, a, b, opts.scaling)
    meta.update(
        {
            "sigma": [float(x) for x in s.tolist()],  # the gradient's top 2r singular values
            "direction": direction,
            "convention": convention,
            "gamma": gamma,
            "scale": c,
            "indices_A": ",".join(map(str, ia)),
            "indices_B": ",".join(map(str, ib)),
            "gradient_norm": float(torch.linalg.vector_norm(gradient).item())
            if isinstance(gradient, torch.Tensor)
            else None,
        }
    )
    return LoraInit(lora_A=a, lora_B=b, residual=residual, meta=meta)


SPEC = register(
    MethodSpec(
        name="lora-ga",
        fn=lora_ga,
        summary="adapter from the SVD of the calibration gradient G (ArB2r: A = V[:, :r]ᵀ, B = U[:, r:2r], "
        "both × d_out^¼/√γ), so the first LoRA steps follow full fine-tuning; W_res = W − s·B·A",
        paper="Wang, Yu, Li. LoRA-GA: Low-Rank Adaptation with Gradient Approximation. NeurIPS 2024, arXiv 2407.05000",
        needs_gradient=True,
        reducer=reducer,
        rank_gain="coverage",
        directions=2,
    )
)
