"""Fold each target layer's weight gradient into an accumulator *inside* its backward pass.

No weight has ``requires_grad``, so autograd never computes a weight gradient. Instead a forward hook on
every active target keeps its input X (T, in) and hooks its output, whose gradient δ (T, out) arrives in
backward; the weight gradient of that micro-batch is δᵀX (out, in), in nn.Linear layout (GPT-2 Conv1D
weights are (in, out); the fold is the same because it is written from X and δ). Two folds:

* :class:`ExactFold`: ``acc += δᵀX`` into a float32 accumulator. On CUDA the bf16/fp16 GEMM writes its
  float32 result straight into the accumulator (``out_dtype``): no weight-gradient tensor in the model
  dtype ever exists, and nothing is rounded to bf16 between micro-batches.
* :class:`SketchFold`: never forms δᵀX. It updates Y += δᵀ(XΩ) (out, k) and W += (Ψδᵀ)X (l, in), the range
  and co-range sketches of :mod:`svdtool.linalg.sketch`, at a cost of 2T(k+l)(in+out) flops instead of 2T·in·out.

Outputs require grad because the hidden states do: the pass makes the embedding output (or a group's input)
a leaf that requires grad (:mod:`svdtool.gradients.passes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from svdtool.gradients.model import Target


_MIXED: dict[str, bool] = {}  # which mixed-precision GEMM forms this torch supports on CUDA (probed once)


def mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with a float32 result; on CUDA low-precision inputs stay low precision (float32 accumulate)."""
    import torch

    if a.dtype == torch.float32:
        return a @ b.float()
    if a.is_cuda and _MIXED.get("mm", True):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # torch without mixed-dtype mm
            _MIXED["mm"] = False
    if a.is_cuda:
        return (a @ b).float()  # rounded to the model dtype once per micro-batch
    return a.float() @ b.float()


def _addmm32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (float32) += a @ b, in place, with a float32 result whatever the input dtype.

    On CUDA the bf16/fp16 GEMM accumulates straight into the float32 accumulator when torch supports
    ``addmm(..., out_dtype=float32)``: no weight gradient in the model dtype is ever materialised.
    """
    import torch

    if a.dtype == torch.float32:
        acc.addmm_(a, b)
        return
    if a.is_cuda and acc.is_cuda and _MIXED.get("addmm", True):
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            return
        except (RuntimeError, TypeError):
            _MIXED["addmm"] = False
    acc.add_(mm32(a, b).to(acc.device))


class ExactFold:
    """acc (out, in) float32 += δᵀX for every micro-batch."""

    def __init__(self, target: Target, device: torch.device) -> None:
        import torch

        self.target = target
        self.acc = torch.zeros((target.out_features, target.in_features), dtype=torch.float32, device=device)

    def fold(self, x: torch.Tensor, d: torch.Tensor) -> None:
        """x (T, in), d (T, out) in the model dtype."""
        if self.acc.device != d.device:  # host-offloaded accumulator
            self.acc.add_(mm32(d.T, x).to(self.acc.device, non_blocking=False))
        else:
            _addmm32(self.acc, d.T, x)


class XOmegaCache:
    """q/k/v (and gate/up) read the same input X, and Ω is shared per input width: form XΩ once per X.

    The cached X is held (so its memory cannot be reused by another tensor while it is the key); call
    :meth:`clear` after each micro-batch.
    """

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None
        self.omega: torch.Tensor | None = None
        self.xo: torch.Tensor | None = None

    def get(self, x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
        c = self.x
        if c is not None and self.omega is omega and c.data_ptr() == x.data_ptr() and c.shape == x.shape:
            assert self.xo is not None
            return self.xo
        self.x, self.omega, self.xo = x, omega, x @ omega  # (T, k), model dtype
        return self.xo

    def clear(self) -> None:
        self.x = self.omega = self.xo = None


class SketchFold:
    """Y (out, k) += δᵀ(XΩ) and W (l, in) += (Ψδᵀ)X; Ω (in, k) and Ψ (l, out) are shared per shape."""

    def __init__(self, target: Target, omega: torch.Tensor, psi: torch.Tensor, cache: XOmegaCache) -> None:
        import torch

        self.target = target
        self.omega = omega  # (in, k), model dtype, on the device
        self.psi = psi  # (l, out), model dtype, on the device
        self.cache = cache
        dev = omega.device
        self.y = torch.zeros((target.out_features, omega.shape[1]), dtype=torch.float32, device=dev)
        self.w = torch.zeros((psi.shape[0], target.in_features), dtype=torch.float32, device=dev)

    def fold(self, x: torch.Tensor, d: torch.Tensor) -> None:
        xo = self.cache.get(x, self.omega)  # (T, k): rounded to the model dtype on bf16 models
        _addmm32(self.y, d.T, xo)  # (out, T) @ (T, k)
        _addmm32(self.w, self.psi @ d.T, x)  # (l, T) @ (T, in)


class Fold(Protocol):
    """What :func:`install` calls in backward (:class:`ExactFold`, :class:`SketchFold` and the sharded folds)."""

    def fold(self, x: torch.Tensor, d: torch.Tensor) -> None: ...


def install(target: Target, state: Fold) -> Any:
    """Fold ``target``'s weight gradient in backward: a forward hook keeps the input X and hooks the output.

    The layer itself runs unchanged (its weight does not require grad, so autograd computes only the input
    gradient). When the output requires grad, its gradient δ arrives in the tensor hook, which folds
    (X, δ) into ``state``. Returns the hook handle (``handle.remove()`` uninstalls it).
    """
    from svdtool.errors import SvdtoolError

    def forward_hook(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if not output.requires_grad:
            return
        x = args[0]
        version = x._version

        def on_grad(d: torch.Tensor) -> None:
            if x._version != version:
                raise SvdtoolError(f"the input of {target.name} was modified in place; its gradient cannot be folded")
            state.fold(x.reshape(-1, x.shape[-1]), d.reshape(-1, d.shape[-1]))  # (T, in), (T, out)

        output.register_hook(on_grad)

    return target.module.register_forward_hook(forward_hook)
