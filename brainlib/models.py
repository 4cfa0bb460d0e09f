"""Model registry: name -> constructor, in the spirit of timm's `create_model`.

Every model takes normalised 3-channel 224x224 input and returns logits for CLASS_NAMES.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .config import CLASS_NAMES

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    MODELS[fn.__name__] = fn
    return fn


def create_model(name: str, num_classes: int = len(CLASS_NAMES), **kwargs) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SeedCNN(nn.Module):
    """The reference network: three blocks of two 3x3 conv-BN-ReLU and a 2x2 max-pool
    (16, 32, 64 channels), then dropout 0.2 and one linear layer on the flattened 64x28x28."""

    def __init__(self, num_classes: int = len(CLASS_NAMES), widths: tuple[int, ...] = (16, 32, 64), dropout: float = 0.2):
        super().__init__()
        layers, cin = [], 3
        for width in widths:
            layers += [*conv_bn_relu(cin, width), *conv_bn_relu(width, width), nn.MaxPool2d(2)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin * 28 * 28, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register
def seed_cnn(num_classes: int = len(CLASS_NAMES)) -> nn.Module:
    return SeedCNN(num_classes)


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM should look at: the last conv block's activation, before pooling."""
    if isinstance(model, SeedCNN):
        relus = [m for m in model.features if isinstance(m, nn.ReLU)]
        return relus[-1]
    raise TypeError(f"no CAM target layer known for {type(model).__name__}")


def layer_table(model: nn.Module, example: torch.Tensor):
    """Per-leaf-layer output shape and parameter count for one forward pass (a light torchinfo)."""
    import pandas as pd

    rows, hooks = [], []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:  # leaves only
            hooks.append(
                module.register_forward_hook(
                    lambda m, _i, out, name=name: rows.append(
                        {
                            "layer": name,
                            "type": type(m).__name__,
                            "output": tuple(out.shape[1:]),
                            "params": sum(p.numel() for p in m.parameters()),
                        }
                    )
                )
            )
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return pd.DataFrame(rows)
