"""numlab.gradcheck against torch.autograd.gradcheck on torch's own operator database: the
first float64 sample of every real-valued differentiable operator, with its correct backward
and with a deliberately wrong one."""
import warnings

import pytest
import torch

from numlab.gradcheck import gradcheck

common = pytest.importorskip("torch.testing._internal.common_methods_invocations")

# Where torch's verdict is the wrong one: torch's own test suite marks native_group_norm's
# gradient test (TestBwdGradients.test_fn_grad) as an expected failure; numlab passes it.
TORCH_IS_WRONG = {"native_group_norm"}
MAX_INPUTS = 400  # entries per sample: keeps the loop fallbacks short
pytestmark = pytest.mark.filterwarnings("ignore")  # torch's own samples warn (torch.qr, ...)


class _Wrong(torch.autograd.Function):
    """Identity forward, backward off by half: every nonzero Jacobian entry is 1.5x."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return 1.5 * g


def _cases():
    for op in common.op_db:
        if not op.supports_autograd or torch.float64 not in op.supported_dtypes("cpu"):
            continue
        try:
            sample = next(iter(op.sample_inputs("cpu", torch.float64, requires_grad=True)))
        except Exception:
            continue
        args = (sample.input, *sample.args)
        checked = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        if not checked or sum(a.numel() for a in checked) > MAX_INPUTS:
            continue
        if any(a.layout != torch.strided for a in checked):
            continue
        yield op, args, sample.kwargs


def _real_outputs(op, kwargs, wrong):
    def fn(*a):
        out = op(*a, **kwargs)
        out = out if isinstance(out, tuple | list) else (out,)
        out = tuple(o for o in out if isinstance(o, torch.Tensor))
        if any(o.is_complex() for o in out):
            raise _Complex
        if wrong:
            out = tuple(_Wrong.apply(o) if o.requires_grad else o for o in out)
        return out
    return fn


class _Complex(Exception):
    pass


def _torch_verdict(fn, args) -> bool:
    return torch.autograd.gradcheck(fn, args, raise_exception=False, check_batched_grad=False,
                                    check_undefined_grad=False)


def test_same_verdicts_as_torch_on_the_operator_database():
    agree, differ, wrong_caught, wrong_total = 0, [], 0, 0
    for op, args, kwargs in _cases():
        fn = _real_outputs(op, kwargs, wrong=False)
        try:
            theirs = _torch_verdict(fn, args)
        except _Complex:
            continue
        except Exception:
            continue  # torch cannot check it either (e.g. no output requires grad)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = gradcheck(fn, args)
        if ours.passed == theirs:
            agree += 1
        elif op.name not in TORCH_IS_WRONG:
            differ.append((op.name, op.variant_test_name, ours.passed, theirs, ours.note))
        if not theirs or op.name in TORCH_IS_WRONG or not bool((ours.analytical.abs() > 1e-3).any()) \
                or wrong_total >= 150:
            continue
        bad = _real_outputs(op, kwargs, wrong=True)
        wrong_total += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            caught_ours = not gradcheck(bad, args).passed
        caught_torch = not _torch_verdict(bad, args)
        wrong_caught += caught_ours and caught_torch
    print(f"agree {agree}, differ {len(differ)}, wrong backwards caught {wrong_caught} of {wrong_total}")
    assert agree > 400, agree
    assert not differ, differ
    assert wrong_total > 100 and wrong_caught == wrong_total, (wrong_caught, wrong_total)
