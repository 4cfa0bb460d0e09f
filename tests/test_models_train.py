import json

import pytest
import torch

from brainlib import train as train_mod
from brainlib.config import CLASS_NAMES
from brainlib.models import MODELS, SeedCNN, cam_target_layer, count_parameters, create_model


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
    assert isinstance(cam_target_layer(model), torch.nn.ReLU)


def test_registry():
    assert "seed_cnn" in MODELS and isinstance(create_model("seed_cnn"), SeedCNN)
    with pytest.raises(KeyError, match="unknown model"):
        create_model("nope")


def _weights(run_dir, name="last.pt"):
    return train_mod.load_checkpoint(f"{run_dir}/checkpoints/{name}")["model_state"]


def test_training_is_deterministic_and_resume_is_exact(prepared_run, tmp_path):
    straight = train_mod.train(prepared_run, progress=False)
    assert len(straight) == 2 and straight["train_loss"].notna().all()
    again_cfg = prepared_run.replace(run_dir=str(tmp_path / "again"), epochs=1)
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "manifest.csv").write_text((tmp_path / "run" / "manifest.csv").read_text())
    first = train_mod.train(again_cfg, progress=False)
    assert first["train_loss"][0] == straight["train_loss"][0]  # same seed, same numbers
    resumed = train_mod.train(again_cfg.replace(epochs=2), resume=True, progress=False)
    assert list(resumed["epoch"]) == [1, 2]
    a, b = _weights(prepared_run.run_dir), _weights(again_cfg.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert 0 <= summary["best_val_acc"] <= 1
    state = train_mod.load_checkpoint(f"{prepared_run.run_dir}/checkpoints/best.pt")
    assert state["class_names"] == list(CLASS_NAMES) and state["model_name"] == "seed_cnn"
    assert (tmp_path / "run" / "tb").is_dir() and any((tmp_path / "run" / "tb").iterdir())


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(prepared_run, monkeypatch):
    train_mod.train(prepared_run.replace(epochs=1), progress=False)
    good = _weights(prepared_run.run_dir)
    original = SeedCNN.forward
    monkeypatch.setattr(SeedCNN, "forward", lambda self, x: original(self, x) * float("nan"))
    with pytest.raises(train_mod.NonFiniteLossError, match="epoch 2, step 1"):
        train_mod.train(prepared_run.replace(epochs=2), resume=True, progress=False)
    after = _weights(prepared_run.run_dir)
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    train_mod.save_checkpoint({"x": 1}, path)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        train_mod.save_checkpoint({"x": 2}, path)
    assert torch.load(path)["x"] == 1


def test_foreign_checkpoints_are_refused(tmp_path):
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="not a brainlib checkpoint"):
        train_mod.load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="could not be read"):
        train_mod.load_checkpoint(tmp_path / "junk.pt")
    state = {"model_name": "seed_cnn", "class_names": ["a", "b"], "model_state": {}}
    with pytest.raises(ValueError, match="classes"):
        train_mod.model_from_checkpoint(state)
    with pytest.raises(ValueError, match="do not fit"):
        train_mod.model_from_checkpoint({**state, "class_names": list(CLASS_NAMES), "model_state": {"w": torch.zeros(1)}})


def test_benchmark_runs_both_pipelines(prepared_run, tmp_path):
    from brainlib.bench import run_benchmark

    out = tmp_path / "bench.json"
    results = run_benchmark(prepared_run.replace(batch_size=4), steps=1, warmup=1, workers=0, out=out)
    assert json.loads(out.read_text())["steps"] == 1
    for key in ("plain_train_images_per_s", "brainlib_train_images_per_s", "plain_eval_images_per_s", "brainlib_eval_images_per_s"):
        assert results[key] > 0


@pytest.mark.parametrize("name", ["resnet18_scratch", "efficientnet_lite0"])
def test_other_models_build_offline_and_have_cam_layers(name):
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, len(CLASS_NAMES))
    assert cam_target_layer(model) is not None


def test_efficientnet_lite0_loads_the_wheels_imagenet_weights():
    pretrained, scratch = create_model("efficientnet_lite0"), MODELS["efficientnet_lite0"](pretrained=False)
    w = pretrained.state_dict()["_conv_stem.weight"]
    assert not torch.equal(w, scratch.state_dict()["_conv_stem.weight"])
    torch.manual_seed(0)
    assert torch.equal(w, create_model("efficientnet_lite0").state_dict()["_conv_stem.weight"])  # same file, same weights


def test_efficientnet_bn_statistics_follow_the_data():
    """The TF port's momentum 0.01 left eval-mode BN on ImageNet statistics after a short fine-tune."""
    bns = [m for m in create_model("efficientnet_lite0").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == pytest.approx(0.1) for m in bns)
