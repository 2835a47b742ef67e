"""Every bad input to the op raises an error that names the problem."""

from __future__ import annotations

import pytest
import torch

from lpmn_fast import prototype_mil

X = torch.randn(2, 5, 4)
P = torch.randn(3, 4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(x=torch.randn(5, 4)), ValueError, "x must be \\(B, T, C\\)"),
        (dict(x=torch.randn(1, 2, 5, 4)), ValueError, "x must be \\(B, T, C\\)"),
        (dict(prototypes=torch.randn(3, 4, 1)), ValueError, "prototypes must be \\(K, C\\)"),
        (dict(prototypes=torch.randn(3, 6)), ValueError, "feature size mismatch"),
        (dict(prototypes=P.double()), TypeError, "mixed dtypes"),
        (dict(x=X.long()), TypeError, "floating"),
        (dict(x=X.numpy()), TypeError, "torch.Tensor"),
        (dict(x=torch.randn(0, 5, 4)), ValueError, "empty batch"),
        (dict(x=torch.randn(2, 0, 4)), ValueError, "zero-length"),
        (dict(prototypes=torch.randn(0, 4)), ValueError, "empty feature or codebook"),
        (dict(lengths=torch.tensor([5, 0])), ValueError, "zero-length utterance.*\\[1\\]"),
        (dict(lengths=torch.tensor([6, 2])), ValueError, "exceed T = 5.*\\[0\\]"),
        (dict(lengths=torch.tensor([5])), ValueError, "lengths must have shape \\(B,\\)"),
        (dict(lengths=torch.tensor([[5, 5]])), ValueError, "lengths must have shape"),
        (dict(lengths=torch.tensor([5.0, 5.0])), TypeError, "integer"),
        (dict(lengths=[5, 5]), TypeError, "lengths must be a torch.Tensor"),
        (dict(tau=0.0), ValueError, "tau must be"),
        (dict(tau=-1.0), ValueError, "tau must be"),
        (dict(tau=float("nan")), ValueError, "tau must be"),
        (dict(tau="1"), ValueError, "tau must be"),
        (dict(fisher=torch.zeros(3, dtype=torch.float64)), TypeError, "float32"),
        (dict(fisher=torch.zeros(4)), ValueError, "shape \\(K,\\)"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_bad_input_raises_named_error(kwargs, error, message):
    args = dict(x=X, prototypes=P, lengths=None, tau=1.0, fisher=None, backend="torch")
    args.update(kwargs)
    with pytest.raises(error, match=message):
        prototype_mil(args.pop("x"), args.pop("prototypes"), args.pop("lengths"), **args)


def test_check_finite_names_nan_in_valid_frames_only():
    x = X.clone()
    x[1, 4, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf.*\\[\\[1, 4\\]\\]"):
        prototype_mil(x, P, check_finite=True, backend="torch")
    # the same NaN in padding is never read
    out = prototype_mil(x, P, torch.tensor([5, 4]), check_finite=True, backend="torch")
    assert torch.isfinite(out.pooled).all()
    p = P.clone()
    p[2, 1] = float("inf")
    with pytest.raises(ValueError, match="prototypes contain NaN or Inf.*\\[2\\]"):
        prototype_mil(X, p, check_finite=True, backend="torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to place tensors on two devices")
def test_mixed_devices_raise():
    with pytest.raises(ValueError, match="mixed devices"):
        prototype_mil(X.cuda(), P, backend="torch")
    with pytest.raises(ValueError, match="lengths is on"):
        prototype_mil(X.cuda(), P.cuda(), torch.tensor([5, 5]), backend="torch")
    with pytest.raises(ValueError, match="fisher accumulator is on"):
        prototype_mil(X.cuda(), P.cuda(), fisher=torch.zeros(3), backend="torch")


def test_mixed_devices_raise_on_meta():
    # The meta device stands in for a second device on machines without a GPU.
    with pytest.raises(ValueError, match="mixed devices"):
        prototype_mil(X, P.to("meta"), backend="torch")
    with pytest.raises(ValueError, match="lengths is on meta"):
        prototype_mil(X, P, torch.tensor([5, 5], device="meta"), backend="torch")
    with pytest.raises(ValueError, match="fisher accumulator is on meta"):
        prototype_mil(X, P, fisher=torch.zeros(3, device="meta"), backend="torch")
