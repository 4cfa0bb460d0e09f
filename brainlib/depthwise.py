"""Depthwise convolutions that train fast in bf16 on a CPU.

Under bf16 autocast on a CPU, oneDNN runs two parts of a depthwise convolution's backward pass on
generic kernels: the input gradient of a strided one (`brgconv_strided`) and the weight gradient of a
5x5 one (`jit_bf16`), where fp32 has depthwise kernels. Measured on a 2-core AMD EPYC with AVX512-BF16
(EfficientNet-Lite0's shapes at batch 64, 256-px input; oneDNN's verbose log names the kernels): the
input gradient of the 96-channel stride-2 layer took 181 ms in bf16 against 32 ms in fp32, the weight
gradient of a 1,152-channel 5x5 layer 49 against 13 ms, and these layers' backward passes were about
half of a training step. `fp32_where_slow` routes such layers through `DepthwiseConv`, whose forward is
the bf16 convolution autocast runs (the same output, bit for bit) and whose backward computes just those
parts in fp32: the input gradient rounded to bf16, as the bf16 kernel returns it, and the weight gradient
kept in fp32, the weight's own precision (the bf16 kernel rounded it to bf16 first). Every other
convolution, and these ones outside bf16 autocast or without autograd, run as before.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

_backward = torch.ops.aten.convolution_backward


class DepthwiseConv(torch.autograd.Function):
    """A bias-free depthwise conv2d of a bf16 input with an fp32 weight, as bf16 autocast computes it,
    whose backward runs the slow bf16 parts in fp32."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = list(stride), list(padding)
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x, weight.to(x.dtype), None, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        used = weight.to(x.dtype)  # the weight the forward multiplied by
        # every routed layer is strided or larger than 3x3, so at least one part below runs in fp32; a strided
        # 5x5 layer runs both, from one fp32 copy of the gradient and the weight
        grad32, used32 = grad.float(), used.float()
        settings = (ctx.stride, ctx.padding, [1, 1], False, [0, 0], x.shape[1])
        if ctx.stride != [1, 1]:
            # x only gives the fp32 kernel its shape and memory layout: no fp32 copy of it is made
            shape_of_x = torch.empty_like(x, dtype=torch.float32)
            grad_x = _backward(grad32, shape_of_x, used32, None, *settings, [True, False, False])[0].to(x.dtype)
        else:
            grad_x = _backward(grad, x, used, None, *settings, [True, False, False])[0]
        if max(weight.shape[-2:]) > 3:
            grad_weight = _backward(grad32, x.float(), used32, None, *settings, [False, True, False])[1]
        else:
            grad_weight = _backward(grad, x, used, None, *settings, [False, True, False])[1].float()
        return grad_x, grad_weight, None, None


def _slow_in_bf16(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
        and module.bias is None
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
        and tuple(module.dilation) == (1, 1)
        and (max(module.stride) > 1 or max(module.kernel_size) > 3)
    )


def _forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    # EfficientNet-Lite's TensorFlow-style "same" padding: an explicit pad before an unpadded conv
    pad = getattr(self, "static_padding", None)
    if pad is not None:
        x = pad(x)
    training_in_bf16 = (
        x.device.type == "cpu"
        and torch.is_grad_enabled()
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    if training_in_bf16:
        return DepthwiseConv.apply(x.to(torch.bfloat16), self.weight, self.stride, self.padding)
    return F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)


def fp32_where_slow(model: nn.Module) -> int:
    """Route `model`'s strided and larger-than-3x3 depthwise convolutions through DepthwiseConv (in
    place; a deep copy keeps the routing, bound to the copy's own weights). Returns how many."""
    routed = 0
    for module in model.modules():
        if _slow_in_bf16(module):
            module.forward = types.MethodType(_forward, module)
            routed += 1
    return routed
