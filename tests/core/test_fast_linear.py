"""Prepacked oneDNN weights (inject/fast_linear.py): on only inside `packed()` without
gradients, close to `F.linear`, and row-exact (a row's bits do not depend on the others)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softprompt.inject import fast_linear

pytestmark = pytest.mark.skipif(not fast_linear.available(), reason="torch without oneDNN")


def _layer(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.Linear(24, 8, bias=False))
    assert fast_linear.install(model)
    return model


def test_packed_rows_equal_each_row_alone_and_f_linear():
    model = _layer()
    x = torch.randn(33, 40)
    with torch.no_grad():
        plain = model(x)
        with fast_linear.packed():
            full = model(x)
            alone = [model(x[i : i + 1]) for i in (0, 1, 17, 32)]
            firsts = [model(x[:m]) for m in (1, 2, 3, 16)]
    torch.testing.assert_close(full, plain, atol=1e-5, rtol=1e-5)
    for i, row in zip((0, 1, 17, 32), alone, strict=True):
        assert torch.equal(row[0], full[i])  # bit for bit
    for got in firsts:
        assert torch.equal(got, full[: got.shape[0]])


def test_outside_packed_or_with_gradients_it_is_f_linear():
    model = _layer(1)
    x = torch.randn(5, 40, requires_grad=True)
    want = F.linear(F.linear(x, model[0].weight, model[0].bias), model[1].weight)
    with torch.no_grad():
        assert torch.equal(model(x), want)  # not inside packed(): unchanged
    with fast_linear.packed():
        out = model(x)  # gradients wanted: the ordinary path
    assert torch.equal(out, want)
    out.sum().backward()
    assert x.grad is not None and model[0].weight.grad is not None


def test_a_written_weight_is_packed_again():
    model = _layer(2)
    x = torch.randn(3, 40)
    with torch.no_grad(), fast_linear.packed():
        before = model(x)
        model[1].weight.mul_(2.0)
        after = model(x)
    torch.testing.assert_close(after, 2 * before, atol=1e-5, rtol=1e-5)


def test_weights_past_the_bound_are_left_alone(monkeypatch):
    monkeypatch.setattr(fast_linear, "MAX_PACKED_BYTES", 100)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24))
    assert not fast_linear.install(model)
    assert "forward" not in vars(model[0])
