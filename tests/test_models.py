"""The model registry: every entry builds offline, carries its input size and Grad-CAM layer."""

import pytest
import torch

from brainlib import models
from brainlib.config import CLASS_NAMES
from brainlib.errors import SettingsError
from brainlib.models import MODELS, SeedCNN, count_parameters, create_model, model_entry


def test_seed_cnn_shape_and_parameter_count():
    model = create_model("seed_cnn").eval()
    # convs with bias (nn.Conv2d's default) + BN (2 per channel) + linear 64*28*28 -> 4
    convs = 9 * (3 * 16 + 16 * 16 + 16 * 32 + 32 * 32 + 32 * 64 + 64 * 64) + 2 * (16 + 32 + 64)
    bns = 2 * 2 * (16 + 32 + 64)
    assert count_parameters(model) == convs + bns + 64 * 28 * 28 * 4 + 4 == 273_236
    assert model.features(torch.zeros(2, 3, 224, 224)).shape == (2, 64, 28, 28)
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, len(CLASS_NAMES))
    with pytest.raises(ValueError, match="224x224 input"):
        model(torch.zeros(1, 3, 256, 256))
    assert isinstance(model_entry("seed_cnn").cam_layer(model), torch.nn.ReLU)


def test_registry():
    assert "seed_cnn" in MODELS and isinstance(create_model("seed_cnn"), SeedCNN)
    with pytest.raises(SettingsError, match="unknown model 'nope'; known: efficientnet_lite0, "):
        create_model("nope")


@pytest.mark.parametrize("name", ["seed_cnn", "resnet18_scratch", "efficientnet_lite0"])
def test_every_entry_builds_offline_and_its_cam_layer_sees_a_spatial_map(name):
    entry = model_entry(name)
    model = create_model(name).eval()
    seen = []
    hook = entry.cam_layer(model).register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        assert model(torch.zeros(2, 3, entry.input_size, entry.input_size)).shape == (2, len(CLASS_NAMES))
    hook.remove()
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][-1] > 1  # one call, a feature map (not pooled)


def test_efficientnet_lite0_loads_the_wheels_imagenet_weights():
    pretrained, scratch = create_model("efficientnet_lite0"), create_model("efficientnet_lite0", pretrained=False)
    w = pretrained.state_dict()["_conv_stem.weight"]
    assert not torch.equal(w, scratch.state_dict()["_conv_stem.weight"])
    torch.manual_seed(0)
    assert torch.equal(
        w, create_model("efficientnet_lite0").state_dict()["_conv_stem.weight"]
    )  # same file, same weights


def test_efficientnet_bn_statistics_follow_the_data():
    """The TF port's momentum 0.01 left eval-mode BN on ImageNet statistics after a short fine-tune."""
    bns = [m for m in create_model("efficientnet_lite0").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == pytest.approx(0.1) for m in bns)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_folding_batchnorm_and_padding_keeps_outputs_and_the_cam_layers_values(name):
    import copy

    torch.manual_seed(0)
    model = models.create_model(name).eval()
    for module in model.modules():  # statistics far from the identity, so that folding matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    folded = models.fold_for_inference(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    pads = [m.padding for m in folded.modules() if isinstance(m, torch.nn.ZeroPad2d)]
    assert all(p[0] != p[1] or p[2] != p[3] for p in pads)  # only asymmetric pads left
    seen = {}
    entry = models.model_entry(name)
    for tag, net in (("plain", model), ("folded", folded)):
        entry.cam_layer(net).register_forward_hook(lambda _m, _i, out, tag=tag: seen.__setitem__(tag, out))
    x = torch.randn(2, 3, entry.input_size, entry.input_size)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-4)
    assert torch.allclose(seen["plain"], seen["folded"], atol=1e-4)
