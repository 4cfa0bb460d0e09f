"""Checkpoints: atomic writes, data-only loading (a crafted pickle cannot run code), foreign
files refused in one line, exports that predict what their source predicts."""

import pickle

import pytest
import torch

from brainlib import checkpoint
from brainlib.config import CLASS_NAMES, Config
from brainlib.errors import CheckpointError, SettingsError
from brainlib.models import create_model


def _state(model_name="seed_cnn"):
    torch.manual_seed(0)
    model = create_model(model_name)
    return {
        "model_name": model_name,
        "class_names": list(CLASS_NAMES),
        "model_state": model.state_dict(),
        "config": {"lr": 1e-3},
    }


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    checkpoint.save_checkpoint({"x": 1}, path)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint({"x": 2}, path)
    assert torch.load(path)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


class _RunsCode:
    """Unpickling this calls os.system: what a malicious .pt file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({**_state(), "extra": _RunsCode(marker)}, bad, pickle_module=pickle)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_checkpoint(bad)
    assert not marker.exists()
    message = str(err.value)
    assert (
        "\n" not in message
        and "evil.pt" in message
        and "read as data only" in message
        and "weights_only" not in message
    )


def test_foreign_and_broken_files_are_refused_in_one_line(tmp_path):
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a brainlib checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "junk.pt")
    whole = (tmp_path / "other.pt").read_bytes()
    damaged = bytearray(whole)
    damaged[len(whole) // 3 : len(whole) // 2] = bytes(
        len(whole) // 2 - len(whole) // 3
    )  # zeroed inside, directory intact
    (tmp_path / "damaged.pt").write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="could not be read|not a brainlib checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load_checkpoint(tmp_path / "missing.pt")
    state = {"model_name": "seed_cnn", "class_names": ["a", "b"], "model_state": {}}
    with pytest.raises(CheckpointError, match="classes"):
        checkpoint.model_from_state(state)
    with pytest.raises(CheckpointError, match="do not fit"):
        checkpoint.model_from_state({**state, "class_names": list(CLASS_NAMES), "model_state": {"w": torch.zeros(1)}})
    with pytest.raises(CheckpointError, match="unknown model"):
        checkpoint.model_from_state({**state, "class_names": list(CLASS_NAMES), "model_name": "nope"})


def test_training_checkpoints_load_as_data(tmp_path):
    """Optimizer, scheduler and RNG state are tensors and plain values: weights_only accepts them."""
    model = create_model("seed_cnn")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10)
    model(torch.zeros(2, 3, 224, 224)).sum().backward()
    opt.step()
    sched.step()
    state = {
        **_state(),
        "optimizer_state": opt.state_dict(),
        "scheduler_state": sched.state_dict(),
        "rng_state": torch.get_rng_state(),
    }
    state["history"] = [{"epoch": 1, "val_acc": 0.5}]
    checkpoint.save_checkpoint(state, tmp_path / "last.pt")
    loaded = checkpoint.load_checkpoint(tmp_path / "last.pt")
    sched.load_state_dict(loaded["scheduler_state"])
    opt.load_state_dict(loaded["optimizer_state"])
    assert loaded["history"] == state["history"]


@pytest.mark.parametrize("half", [False, True])
def test_export_is_small_and_predicts_what_its_source_predicts(tmp_path, half):
    src = tmp_path / "best.pt"
    checkpoint.save_checkpoint(
        {
            **_state("efficientnet_lite0"),
            "optimizer_state": {"big": torch.zeros(2_000_000)},
            "temperature": 1.3,
            "calibrated_size": 224,
            "val_digest": "0123456789abcdef",
        },
        src,
    )
    out = checkpoint.export_checkpoint(src, tmp_path / "small.pt", half=half)
    small = checkpoint.load_checkpoint(out)
    assert "optimizer_state" not in small and small["temperature"] == 1.3
    # the side its calibration was fitted at and the carve that selected it travel with the weights
    assert (small["calibrated_size"], small["val_digest"]) == (224, "0123456789abcdef")
    assert out.stat().st_size < (0.6 if half else 0.9) * src.stat().st_size
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = checkpoint.load_for_inference(src).model(x)
        b = checkpoint.load_for_inference(out).model(x)
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert torch.allclose(a, b, atol=2e-2 if half else 0)


def test_load_for_inference_reads_input_size_and_cam_layer(tmp_path):
    path = checkpoint.save_checkpoint(
        {**_state("resnet18_scratch"), "config": {"image_size": 96, "cache_size": 128}}, tmp_path / "r.pt"
    )
    net = checkpoint.load_for_inference(path)
    assert (net.image_size, net.cache_size, net.temperature) == (96, 128, None)
    assert len(net.cam_layers) == 1 and net.cam_layers[0] is net.cam_model.layer4[-1]
    # on the CPU the runtime scores, and its feature taps stand for the CAM layer; Grad-CAM keeps PyTorch
    assert net.engine == "onnxruntime" and net.model is not net.cam_model and len(net.feature_layers) == 1


def test_the_torch_engine_scores_with_the_pytorch_model_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAIN_CPU_ENGINE", "torch")
    path = checkpoint.save_checkpoint(_state("resnet18_scratch"), tmp_path / "r.pt")
    net = checkpoint.load_for_inference(path)
    assert net.engine == "torch" and net.cam_model is net.model and net.feature_layers == net.cam_layers


def test_a_checkpoint_scores_at_its_test_side_and_drops_calibration_fitted_at_another(tmp_path):
    config = {"image_size": 96, "test_image_size": 128, "cache_size": 128}
    fitted = {"temperature": 1.5, "conformal": {"score": "lac", "n_calibration": 9, "thresholds": {"0.01": 0.5}}}
    cases = {96: None, 128: 1.5, None: 1.5}  # fitted at the training side / at the test side / not recorded (older)
    for calibrated_size, expected in cases.items():
        state = {**_state("resnet18_scratch"), "config": config, **fitted}
        if calibrated_size is not None:
            state["calibrated_size"] = calibrated_size
        net = checkpoint.load_for_inference(checkpoint.save_checkpoint(state, tmp_path / "r.pt"))
        assert net.image_size == 128 and net.scoring_config(Config()).image_size == 128
        assert net.temperature == expected and (net.conformal is None) == (expected is None)
    # no test side: the training side, as before
    plain = {**_state("resnet18_scratch"), "config": {"image_size": 96, "cache_size": 128}}
    assert checkpoint.load_for_inference(checkpoint.save_checkpoint(plain, tmp_path / "p.pt")).image_size == 96
    assert Config(image_size=96).scoring_size == 96 and Config(image_size=96, test_image_size=128).scoring_size == 128


def test_a_model_whose_head_fixes_its_side_is_not_copied_to_score_at_another(tmp_path):
    src = checkpoint.save_checkpoint({**_state("seed_cnn"), "config": {"image_size": 224}}, tmp_path / "s.pt")
    with pytest.raises(SettingsError, match="224-px input only"):
        checkpoint.scored_at(src, 272, tmp_path / "s272.pt")
    assert not (tmp_path / "s272.pt").exists()
    assert checkpoint.load_for_inference(checkpoint.scored_at(src, 224, tmp_path / "s224.pt")).image_size == 224


def test_a_checkpoint_naming_a_model_this_code_does_not_know_is_a_bad_checkpoint(tmp_path):
    """Not a settings error: the file is what is wrong (exit 4), wherever it is read."""
    src = checkpoint.save_checkpoint({**_state("seed_cnn"), "model_name": "nope"}, tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match="unknown model"):
        checkpoint.scored_at(src, 224, tmp_path / "s224.pt")
    assert not (tmp_path / "s224.pt").exists()
    with pytest.raises(CheckpointError, match="unknown model"):
        checkpoint.scoring_size(checkpoint.load_checkpoint(src))
    with pytest.raises(CheckpointError, match="unknown model"):
        checkpoint.load_for_inference(src)


def test_a_copy_scored_at_another_side_drops_the_calibration_of_the_side_it_had(tmp_path):
    """An older checkpoint (no calibrated_size: calibrated at its one side) copied to score at 128 px must
    not pass its 96-px temperature off as fitted at 128; copied back to 96 it keeps it."""
    fitted = {"temperature": 1.5, "conformal": {"score": "lac", "n_calibration": 9, "thresholds": {"0.01": 0.5}}}
    old = {**_state("resnet18_scratch"), "config": {"image_size": 96, "cache_size": 128}, **fitted}
    src = checkpoint.save_checkpoint(old, tmp_path / "old.pt")
    larger = checkpoint.load_for_inference(checkpoint.scored_at(src, 128, tmp_path / "at128.pt"))
    assert (larger.image_size, larger.temperature, larger.conformal) == (128, None, None)
    assert larger.state["calibrated_size"] == 96 and torch.equal(
        larger.state["model_state"]["fc.weight"], old["model_state"]["fc.weight"]
    )
    same = checkpoint.load_for_inference(checkpoint.scored_at(src, 96, tmp_path / "at96.pt"))
    assert (same.image_size, same.temperature) == (96, 1.5)
