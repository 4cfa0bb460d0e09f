"""Depthwise convolutions routed for bf16 training on a CPU: the same forward as autocast's, gradients
as exact as the bf16 kernels' (the weight's of a 5x5 layer more so), and nothing else changed."""

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainlib.depthwise import DepthwiseConv, fp32_where_slow
from brainlib.models import create_model, training_model

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def lite0() -> nn.Module:
    torch.manual_seed(0)
    return create_model("efficientnet_lite0", pretrained=False).to(memory_format=torch.channels_last)


def test_the_strided_and_5x5_depthwise_convolutions_are_routed():
    model = lite0()
    assert fp32_where_slow(model) == 11
    routed = [m for m in model.modules() if isinstance(m, nn.Conv2d) and "forward" in vars(m)]
    assert len(routed) == 11
    assert all(m.groups == m.in_channels > 1 and (max(m.stride) > 1 or max(m.kernel_size) > 3) for m in routed)
    assert fp32_where_slow(create_model("seed_cnn")) == 0  # no depthwise convolutions
    assert sum("forward" in vars(m) for m in training_model("efficientnet_lite0", "cpu").modules()) == 11


@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (5, 2), (5, 1)])
def test_gradients_against_float64(kernel, stride):
    torch.manual_seed(1)
    channels, side = 24, 19
    x = torch.randn(4, channels, side, side).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, kernel, kernel)
    padding = (0, 0) if stride > 1 else (kernel // 2, kernel // 2)

    def grads(conv):
        xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
        out = conv(xr, wr)
        grad_out = torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype)
        out.backward(grad_out)
        return out, xr.grad, wr.grad, grad_out

    with torch.autocast(**BF16):
        out, grad_x, grad_w, grad_out = grads(lambda xr, wr: DepthwiseConv.apply(xr, wr, (stride,) * 2, padding))
        stock = grads(lambda xr, wr: F.conv2d(xr, wr, None, stride, padding, 1, channels))
    assert torch.equal(out, stock[0]) and out.dtype == torch.bfloat16
    assert grad_x.dtype == torch.bfloat16 and grad_w.dtype == torch.float32
    # float64 of the same bf16 numbers: what each gradient should round to
    x64, w64, g64 = x.double(), weight.to(torch.bfloat16).double(), grad_out.double()
    want_x = torch.nn.grad.conv2d_input(x.shape, w64, g64, stride, padding, 1, channels)
    want_w = torch.nn.grad.conv2d_weight(x64, weight.shape, g64, stride, padding, 1, channels)
    assert torch.allclose(grad_x.double(), want_x, rtol=2**-8, atol=1e-6 * want_x.abs().max().item())
    error = (grad_w.double() - want_w).abs().max().item() / want_w.abs().max().item()
    stock_error = (stock[2].double() - want_w).abs().max().item() / want_w.abs().max().item()
    if kernel > 3:  # computed in fp32 and kept: far closer than the bf16 kernel's rounded gradient
        assert error < 1e-5 < stock_error
    else:  # the bf16 kernel's own, as before
        assert torch.equal(grad_w, stock[2])


def test_a_routed_model_gives_autocasts_outputs_and_nearly_its_gradients():
    stock = lite0().train()
    routed = copy.deepcopy(stock)
    fp32_where_slow(routed)
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for model in (stock, routed):
        torch.manual_seed(2)  # the same drop-connect masks
        with torch.autocast(**BF16):
            out = model(x)
        out.float().square().sum().backward()
        outs.append(out)
        grads.append([p.grad for p in model.parameters()])
    assert torch.equal(*outs)
    for a, b in zip(*grads):  # bf16's own precision, 2^-8, with room for its rounding to pass through the layers
        assert (a - b).abs().max() <= 0.05 * a.abs().max()


def test_outside_bf16_autocast_it_is_the_stock_convolution():
    stock = lite0().train()
    routed = copy.deepcopy(stock)
    fp32_where_slow(routed)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    results = []
    for model in (stock, routed):
        torch.manual_seed(3)
        out = model(x)  # fp32 training
        out.sum().backward()
        with torch.no_grad(), torch.autocast(**BF16):  # bf16 scoring
            scored = model.eval()(x)
        results.append((out, scored, [p.grad for p in model.parameters()]))
    (out_a, scored_a, grads_a), (out_b, scored_b, grads_b) = results
    assert torch.equal(out_a, out_b) and torch.equal(scored_a, scored_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_a_deep_copy_routes_through_its_own_weights():
    """The exponential moving average keeps a deep copy of the model being trained."""
    model = lite0()
    fp32_where_slow(model)
    twin = copy.deepcopy(model)
    pairs = [(a, b) for a, b in zip(model.modules(), twin.modules()) if "forward" in vars(a)]
    assert len(pairs) == 11
    for _, copied in pairs:
        assert copied.forward.__self__ is copied
        copied.weight.data.zero_()
    original, copied = pairs[0]
    z = torch.randn(2, original.in_channels, 17, 17, requires_grad=True)
    with torch.autocast(**BF16):
        assert original(z).abs().max() > 0 and copied(z).abs().max() == 0


def test_the_timing_script_times_every_routed_layer_and_both_steps(script, monkeypatch, capsys):
    argv = ["depthwise_backward_times.py", "--side", "64", "--batch", "2", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    script("depthwise_backward_times").main()
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("  (2, ") and " -> " in line for line in lines) == 11
    assert any(line.startswith("  all routed layers: ") for line in lines)
    assert [line.split(":")[0] for line in lines[-2:]] == ["training step, bf16 kernels", "training step, routed"]
