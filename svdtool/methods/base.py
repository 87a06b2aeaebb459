"""The contract every init method follows.

An init method is a pure function: it takes one weight W in nn.Linear layout (out, in), float32
or float64, plus the options it needs (rank, scaling, a gradient for LoRA-GA …) and returns an
:class:`LoraInit`. It does no I/O, prints nothing, and does not modify its inputs.

PEFT convention: ``lora_A`` is (r, in), ``lora_B`` is (out, r), and the layer computes
``W_res x + s·B A x`` with s = α/r (or α/√r with rsLoRA). Every method returns A, B and
W_res = W − s·B·A, the residual computed from the *exact returned factors*, so that
W_res + s·B·A reproduces W up to rounding of the subtraction. Methods with ``keeps_base`` (MiCA,
orthogonal, LoRA-One) leave W alone and return it unchanged as ``residual``: only their adapter is
written, on the original model.

Keyword arguments a method may receive (and must otherwise ignore through ``**_``): ``name`` (the
checkpoint tensor name, e.g. for a per-layer seed), and for ``needs_gradient`` methods ``gradient``,
``transposed`` and ``source_dtype``, and for methods with a ``statistic`` ``statistics`` (CorDA's
covariance or its shared per-input part, EVA's allocated components).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class InitOptions:
    """Options common to all methods; method-specific ones go in ``extra``."""

    rank: int
    alpha: float
    use_rslora: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scaling(self) -> float:
        """s = α/r, or α/√r with rsLoRA (PEFT's ``scaling``)."""
        return self.alpha / (self.rank**0.5 if self.use_rslora else self.rank)


@dataclass
class LoraInit:
    """The output of one init method on one weight."""

    lora_A: torch.Tensor  # (r, in)
    lora_B: torch.Tensor  # (out, r)
    residual: torch.Tensor  # (out, in), W − s·B·A, same dtype as the input W
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. singular values used, SVD method, seed


InitFn = Callable[..., LoraInit]


@dataclass(frozen=True)
class MethodSpec:
    """A registered init method."""

    name: str
    fn: InitFn
    summary: str
    paper: str
    needs_gradient: bool = False
    frozen: tuple[str, ...] = ()  # adapter parameters that must stay frozen in training, e.g. ("lora_A",)
    # The base is left untouched: only the adapter is written, with base_model_name_or_path = the original.
    keeps_base: bool = False
    # With keeps_base: the adapter's s·B·A ≠ 0 at init (LoRA-One's one gradient step), so the starting
    # model is W + s·B·A, not W.
    changes_output: bool = False
    # What adapter_config.json says: True (load A and B as saved), or a PEFT init name that must run (MiCA's
    # "mica" makes PEFT ≥ 0.20 wrap the layer in its variant, which keeps lora_B frozen).
    init_lora_weights: bool | str = True
    # Checks on the options that need no checkpoint (raise SvdtoolError), e.g. orthogonal's even rank.
    check: Callable[[InitOptions], None] | None = None
    # needs_gradient: reducer(rank, extra) -> reduce(name, G), run on each G while it is on the device.
    reducer: Callable[[int, dict[str, Any]], Callable[[str, Any], Any]] | None = None
    # --rank-alloc statistic this method's ranks can be allocated by: "energy" (σ(W)²), "coverage" (σ(G)²),
    # "eva" (explained variance), or None (uniform only). directions: singular directions one rank adds (LoRA-GA: 2).
    rank_gain: str | None = None
    directions: int = 1
    # rank_gain "energy": energy_sigma(W (out, in) float64, its storage dtype, extra, k) gives the k largest singular
    # values of the matrix the adapter fits, whose σ²/‖W‖²_F the allocation gains; None: W's own (PiSSA, QPiSSA).
    energy_sigma: Callable[[Any, Any, dict[str, Any], int], Any] | None = None
    # The base is loaded quantised (LoftQ, QPiSSA): fn also gets ``source_dtype=`` (the residual's storage dtype,
    # which the trainer quantises) and returns the residual already rounded to it.
    quantizes: bool = False
    # Activation statistics of the layer inputs the method takes as ``statistics=`` (:mod:`svdtool.statistics`):
    # "corda" (CorDA's uncentred covariance) or "centred" (EVA's principal components), collected from --calib.
    statistic: str | None = None
    # With a statistic: prepare(value, device) -> what fn takes as ``statistics=``, the part of the method that
    # depends on the input only (CorDA: ridge, C_d, its LU). Run once per distinct input and shared by the targets
    # that read it (q/k/v, gate/up); None: fn takes the value as it is.
    prepare: Callable[[Any, torch.device], Any] | None = None
