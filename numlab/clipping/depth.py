"""Gradient growth with depth: backpropagate through a deep stack whose layers have Jacobians
of known spectral norm (``gain`` times an orthogonal matrix) and record the gradient norm at
every layer, beside the geometric rate the gain predicts."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from numlab._checks import int_at_least, positive_number, real_array
from numlab._checks import seed as check_seed
from numlab.device import pick, threads
from numlab.formats import COMPUTE_DTYPES, resolve_dtype

NONLINEARITIES = ("linear", "tanh", "relu")

# How the per-layer factor relates to ``gain`` for each nonlinearity (see the docstring of
# gradient_norms_by_depth): the word is shown next to the number so nobody reads a bound
# as an equality.
_RATE_KIND = {"linear": "exact", "tanh": "upper bound", "relu": "mean-field"}


@dataclass(frozen=True, repr=False)
class DepthProfile:
    """Gradient norm at every layer of a deep stack, with the rate the gain predicts.

    ``norms[l]`` is the root-mean-square over the batch of ``|dL/dh_l|``, where ``h_0`` is
    the input and ``h_depth`` the output, and the loss is scaled so that ``norms[depth] = 1``.
    """

    depth: int
    width: int
    gain: float
    nonlinearity: str
    dtype: torch.dtype
    layers: torch.Tensor
    norms: torch.Tensor
    predicted: torch.Tensor
    predicted_rate: float
    rate_kind: str
    fitted_rate: float

    @property
    def input_norm(self) -> float:
        """Gradient norm at the input of the stack (``depth`` layers away from the loss)."""
        return float(self.norms[0])

    @property
    def overflowed(self) -> bool:
        """True if some layer's gradient norm is not finite in ``dtype``."""
        return not bool(torch.isfinite(self.norms).all())

    def __repr__(self):
        return (
            f"DepthProfile({self.nonlinearity}, depth={self.depth}, width={self.width}, "
            f"gain={self.gain:g}, {str(self.dtype).replace('torch.', '')}: |grad| at input "
            f"{self.input_norm:.3g}, fitted rate {self.fitted_rate:.4f}/layer, predicted "
            f"{self.predicted_rate:.4f} ({self.rate_kind}))"
        )


@functools.lru_cache(maxsize=16)
def _haar_orthogonal(depth: int, width: int, seed: int) -> torch.Tensor:
    # Cached: a slider that only moves the gain reuses the QR (the costly part). Callers
    # only read the result (gain * q makes a new tensor).
    gen = torch.Generator().manual_seed(seed)
    with threads(1):
        # QR of a Gaussian matrix in float64 (one batched call); fixing the signs of R's
        # diagonal makes Q Haar-distributed rather than biased by the QR convention.
        q, r = torch.linalg.qr(torch.randn(depth, width, width, generator=gen,
                                           dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def orthogonal_stack(depth: int, width: int, gain: float = 1.0, *, seed: int = 0,
                     dtype=torch.float64, device="cpu") -> torch.Tensor:
    """``depth`` matrices ``gain * Q`` with ``Q`` orthogonal (Haar), shape (depth, width, width).

    Every singular value of ``gain * Q`` equals ``gain``, so its spectral norm is ``gain``.
    """
    depth = int_at_least("depth", depth)
    width = int_at_least("width", width)
    gain = positive_number("gain", gain)
    seed = check_seed(seed)
    # Draw at least 256 layers' worth (when that is small) and keep the first `depth`: a depth
    # slider then reuses one cached QR, and a deeper stack extends a shallower one.
    q = _haar_orthogonal(max(depth, min(256, 2**22 // (width * width))), width, seed)[:depth]
    return (gain * q).to(dtype=resolve_dtype(dtype, COMPUTE_DTYPES), device=pick(device))


def gradient_norms_by_depth(depth: int, width: int = 64, gain: float = 1.0,
                            nonlinearity: str = "linear", *, batch: int = 8, seed: int = 0,
                            dtype=torch.float32, device="cpu") -> DepthProfile:
    """Backpropagate through ``h_l = f(W_l h_{l-1})``, ``W_l = gain * Q_l``, and record |dL/dh_l|.

    The chain rule gives ``dL/dh_{l-1} = W_l^T diag(f'(W_l h_{l-1})) dL/dh_l``. With
    ``W_l = gain * Q_l`` and ``Q_l`` orthogonal, ``|W_l^T g| = gain * |g|`` exactly, so:

    * ``linear``: each layer multiplies the norm by exactly ``gain``;
    * ``tanh``: ``0 < tanh' <= 1``, so ``gain`` is an upper bound on the factor (tanh
      saturates for large pre-activations and the factor drops well below it);
    * ``relu``: ``relu'`` zeroes about half the entries of a zero-mean pre-activation,
      so the factor is about ``gain / sqrt(2)`` (a mean-field estimate, not a bound).

    ``predicted[l] = predicted_rate ** (depth - l)``; ``fitted_rate`` is ``exp`` of the
    least-squares slope of ``log norms`` against the distance from the output.
    """
    depth = int_at_least("depth", depth)
    width = int_at_least("width", width)
    batch = int_at_least("batch", batch)
    gain = positive_number("gain", gain)
    seed = check_seed(seed)
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    dtype = resolve_dtype(dtype, COMPUTE_DTYPES)
    device = pick(device)
    act = {"linear": lambda z: z, "tanh": torch.tanh, "relu": torch.relu}[nonlinearity]

    weights = orthogonal_stack(depth, width, gain, seed=seed, dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)  # dL/dh_depth = v: unit norm for every sample
    x, v = x.to(dtype=dtype, device=device), v.to(dtype=dtype, device=device)

    norms = _backprop_norms(weights, act, x, v)

    rate = gain / math.sqrt(2.0) if nonlinearity == "relu" else gain
    layers = torch.arange(depth + 1)
    distance = (depth - layers).double()
    predicted = torch.tensor(rate, dtype=torch.float64).pow(distance)
    return DepthProfile(
        depth=depth, width=width, gain=gain, nonlinearity=nonlinearity, dtype=dtype,
        layers=layers, norms=norms, predicted=predicted, predicted_rate=rate,
        rate_kind=_RATE_KIND[nonlinearity], fitted_rate=fit_rate(distance, norms),
    )


def _backprop_norms(weights, act, x, v) -> torch.Tensor:
    """RMS over the batch of |dL/dh_l| at every layer, for ``L = sum(h_depth * v)``."""
    with threads(1):
        hs = [x.requires_grad_(True)]
        for w in weights:  # a loop over layers (<= a few hundred), not over data points
            hs.append(act(hs[-1] @ w.T))
        loss = (hs[-1] * v).sum()  # samples are independent: each row gets its own gradient
        grads = torch.autograd.grad(loss, hs)
    per_sample = torch.stack([g.detach().double().norm(dim=1) for g in grads])  # (depth+1, batch)
    return per_sample.pow(2).mean(dim=1).sqrt().cpu()


def fit_rate(distance: torch.Tensor, norms: torch.Tensor) -> float:
    """``exp`` of the least-squares slope of ``log(norms)`` on ``distance`` (finite, > 0 only)."""
    distance = torch.from_numpy(real_array("distance", distance, dims=1))
    norms = torch.from_numpy(real_array("norms", norms, dims=1))
    if distance.shape != norms.shape:
        raise ValueError(f"distance and norms must have the same length, got {len(distance)} "
                         f"and {len(norms)}")
    keep = torch.isfinite(norms) & (norms > 0)
    if int(keep.sum()) < 2:
        return float("nan")
    d, y = distance[keep], norms[keep].log()
    d0 = d - d.mean()
    slope = (d0 * (y - y.mean())).sum() / (d0 * d0).sum()
    return float(slope.exp())
