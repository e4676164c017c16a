"""The two Jacobians :mod:`numlab.gradcheck` compares, and how they are evaluated.

The numerical one by central differences, the analytical one from vector-Jacobian products
with unit cotangents. Both are batched with ``torch.func.vmap`` where that can be trusted
(checked on a first row or column against an unbatched evaluation), and otherwise computed
torch's way: one call per perturbation of the caller's own tensor, one backward per row.
"""
from __future__ import annotations

import itertools

import torch


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, tuple | list) else (x,)


def _outputs(fn, args) -> tuple[torch.Tensor, ...]:
    out = _as_tuple(fn(*args))
    if not out or not all(isinstance(o, torch.Tensor) for o in out):
        raise TypeError(
            "fn must return a tensor or a tuple of tensors, got "
            f"{[type(o).__name__ for o in out] or 'an empty tuple'}"
        )
    if any(o.is_complex() for o in out):  # integer outputs are fine: skipped, as in torch
        raise TypeError(f"fn must return real floating-point tensors, got {[o.dtype for o in out]} "
                        "(a complex output can be checked as torch.view_as_real(out))")
    return out


def _flat(outputs, keep) -> torch.Tensor:
    if len(keep) == 1:
        return outputs[keep[0]].reshape(-1)
    return torch.cat([outputs[j].reshape(-1) for j in keep])


def _is_plain(x: torch.Tensor) -> bool:
    """Whether x owns its storage from the start, densely: a fresh copy is then the same input."""
    return x.storage_offset() == 0 and x.is_contiguous() and x.untyped_storage().nbytes() == \
        x.numel() * x.element_size()


def _numerical_loop(fn, args, i, eps, keep) -> torch.Tensor:
    """torch's way: perturb the caller's tensor in place, entry by entry; (outputs, n_i)."""
    x = args[i].detach()  # shares storage with args[i]: fn sees every perturbation
    cols = []
    with torch.no_grad():
        for idx in itertools.product(*map(range, x.shape)):
            orig = x[idx].clone()
            # copies: an output may be a view of x (as_strided), which the next step changes
            x[idx] = orig + eps
            plus = _flat(_outputs(fn, args), keep).to(torch.float64, copy=True)
            x[idx] = orig - eps
            minus = _flat(_outputs(fn, args), keep).to(torch.float64, copy=True)
            x[idx] = orig
            cols.append((plus - minus) / (2 * eps))
    return torch.stack(cols, 1)


def _numerical_batched(fn, args, i, eps, keep) -> torch.Tensor | None:
    """All 2 n perturbed copies of input i in one vmap call; None if vmap fails or lies."""
    x = args[i].detach()
    n = x.numel()
    batch = x.reshape(1, n).repeat(2 * n, 1)
    # Same arithmetic as torch: x_j + eps and x_j - eps rounded in x's dtype.
    batch[:n].diagonal().add_(eps)
    batch[n:].diagonal().sub_(eps)
    batch = batch.view(2 * n, *x.shape)

    def one(xi):
        return _flat(_outputs(fn, args[:i] + (xi,) + args[i + 1:]), keep)

    try:
        vals = torch.func.vmap(one)(batch)
    except Exception:  # not batchable: in-place ops, .item(), old-style Functions, ...
        return None
    if not _close(vals[[0, n]], torch.stack([one(batch[0]), one(batch[n])])):
        return None  # vmap batched this fn wrongly
    return ((vals[:n] - vals[n:]) / (2 * eps)).T.double()


def _close(batched: torch.Tensor, single: torch.Tensor) -> bool:
    """Equal up to the rounding a batched kernel may legitimately change (64 ulp of the
    largest value), with NaN and inf in the same places."""
    b, s = batched.detach(), single.detach()
    if b.shape != s.shape or not torch.equal(b.isfinite(), s.isfinite()):
        return False
    finite = s.isfinite()
    if not torch.equal(b[~finite].nan_to_num(), s[~finite].nan_to_num()):
        return False
    b, s = b[finite], s[finite]
    tol = 64 * torch.finfo(s.dtype).eps * float(s.abs().max()) if s.numel() else 0.0
    return s.numel() == 0 or float((b - s).abs().max()) <= tol


def _analytical(fn, args, checked, outputs, keep, batched) -> tuple[torch.Tensor, bool]:
    """(outputs, inputs) Jacobian from vector-Jacobian products with unit cotangents.

    First choice: one ``vmap`` over ``torch.func.vjp``, checked on its first row against a
    single VJP; otherwise one ``torch.autograd.grad`` per row.
    """
    diff = [args[i] for i in checked]
    m = sum(outputs[j].numel() for j in keep)
    width = sum(x.numel() for x in diff)
    if m == 0:
        return torch.zeros(0, width, dtype=torch.float64), batched
    if batched:
        def flat(*d):
            full = list(args)
            for i, t in zip(checked, d, strict=True):
                full[i] = t
            return _flat(_outputs(fn, tuple(full)), keep)

        try:
            _, vjp_fn = torch.func.vjp(flat, *(x.detach() for x in diff))
            eye = torch.eye(m, dtype=outputs[keep[0]].dtype, device=outputs[keep[0]].device)
            rows = torch.cat([g.reshape(m, -1) for g in torch.func.vmap(vjp_fn)(eye)], 1)
            first = torch.cat([g.reshape(1, -1) for g in vjp_fn(eye[0])], 1)  # checked alone
            if _close(rows[:1], first):
                return rows.double().cpu(), True
        except Exception:  # fn or its backward is not functorch-compatible
            pass
    targets = [outputs[j] for j in keep]
    rows = []
    for r in range(m):
        cot = torch.zeros(m, dtype=targets[0].dtype, device=targets[0].device)
        cot[r] = 1
        parts = torch.split(cot, [t.numel() for t in targets])
        grads = torch.autograd.grad(targets, diff, [p.view_as(t).to(t.dtype) for p, t in zip(parts, targets,
                                    strict=True)], retain_graph=True, allow_unused=True)
        rows.append(torch.cat([torch.zeros(x.numel(), dtype=torch.float64, device=x.device) if g is None
                               else g.reshape(-1).double() for g, x in zip(grads, diff, strict=True)]))
    return torch.stack(rows).cpu(), False
