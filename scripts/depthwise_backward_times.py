"""Whether routing depthwise convolutions through brainlib.depthwise pays on this CPU: for every layer of a
model that `fp32_where_slow` routes, the backward pass of oneDNN's bf16 kernel against DepthwiseConv's (the
layer's own input shape at a training batch, bf16 autocast, channels-last), then whole training steps of the
model with and without the routing, alternated.

    python scripts/depthwise_backward_times.py [--model efficientnet_lite0] [--side 256] [--batch 64] [--steps 4]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brainlib.depthwise import DepthwiseConv, fp32_where_slow  # noqa: E402
from brainlib.models import create_model  # noqa: E402


def backward_seconds(out: torch.Tensor, inputs: tuple, grad: torch.Tensor, repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` backward passes from `out` after one untimed pass."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        torch.autograd.grad(out, inputs, grad, retain_graph=True)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def layer_inputs(model, side: int, batch: int) -> list[tuple[torch.nn.Conv2d, tuple]]:
    """Each routed layer with the shape of what its convolution receives (after its padding)."""
    shapes = []

    def record(module, args):
        pad = getattr(module, "static_padding", None)
        shapes.append((module, tuple((pad(args[0]) if pad is not None else args[0]).shape)))

    routed = [m for m in model.modules() if "forward" in vars(m)]
    hooks = [m.register_forward_pre_hook(record) for m in routed]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    for hook in hooks:
        hook.remove()
    return [(m, (batch, *shape[1:])) for m, shape in shapes]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    stock = create_model(args.model).to(memory_format=torch.channels_last)
    routed = copy.deepcopy(stock)
    fp32_where_slow(routed)

    total_stock = total_routed = 0.0
    print("layer input (N, C, H, W), kernel, stride: backward ms, bf16 kernel -> routed")
    for module, shape in layer_inputs(routed, args.side, args.batch):
        x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        weight = module.weight.detach().clone().requires_grad_()
        stride, padding = tuple(module.stride), tuple(module.padding)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_stock = F.conv2d(x, weight, None, stride, padding, 1, shape[1])
            out_routed = DepthwiseConv.apply(x, weight, stride, padding)
        grad = torch.randn_like(out_stock)
        t_stock = backward_seconds(out_stock, (x, weight), grad)
        t_routed = backward_seconds(out_routed, (x, weight), grad)
        total_stock, total_routed = total_stock + t_stock, total_routed + t_routed
        print(
            f"  {shape}, {module.kernel_size[0]}x{module.kernel_size[1]}, {stride[0]}: {t_stock * 1e3:7.1f} -> {t_routed * 1e3:7.1f}"
        )
    print(f"  all routed layers: {total_stock * 1e3:.0f} -> {total_routed * 1e3:.0f} ms")

    x = torch.randn(args.batch, 3, args.side, args.side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (args.batch,))
    models = {"bf16 kernels": stock.train(), "routed": routed.train()}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}

    def step(name: str) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(models[name](x).float(), y)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    rates: dict[str, list[float]] = {name: [] for name in models}
    for name in models:
        step(name)  # warm-up
    for _ in range(args.steps):
        for name in models:
            start = time.perf_counter()
            step(name)
            rates[name].append(args.batch / (time.perf_counter() - start))
    for name, values in rates.items():
        print(f"training step, {name}: {' '.join(f'{v:.1f}' for v in values)} img/s")


if __name__ == "__main__":
    main()
