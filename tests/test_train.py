"""The training loop: deterministic, exact resume, NaN guard, a calibrated best checkpoint, and it
never writes the run's settings."""

import json
from pathlib import Path

import pytest
import torch

from brainlib import train as train_mod
from brainlib.checkpoint import load_checkpoint
from brainlib.config import CLASS_NAMES
from brainlib.models import SeedCNN


def _weights(run_dir, name="last.pt"):
    return load_checkpoint(f"{run_dir}/checkpoints/{name}")["model_state"]


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
    state = load_checkpoint(f"{prepared_run.run_dir}/checkpoints/best.pt")
    assert state["class_names"] == list(CLASS_NAMES) and state["model_name"] == "seed_cnn"
    assert (tmp_path / "run" / "tb").is_dir() and any((tmp_path / "run" / "tb").iterdir())


def test_batches_prepared_in_a_worker_process_train_the_same_weights(prepared_run, tmp_path):
    """host_prefetch moves where a batch is drawn, never what it is: a seed trains the same weights."""
    runs = {}
    for mode in ("off", "process"):
        cfg = prepared_run.replace(run_dir=str(tmp_path / mode), epochs=1, host_prefetch=mode, acquisition_aug=True)
        (tmp_path / mode).mkdir()
        (tmp_path / mode / "manifest.csv").write_text((tmp_path / "run" / "manifest.csv").read_text())
        runs[mode] = train_mod.train(cfg, progress=False)
    a, b = _weights(tmp_path / "off"), _weights(tmp_path / "process")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs["off"]["train_loss"][0] == runs["process"]["train_loss"][0]


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(prepared_run, monkeypatch):
    train_mod.train(prepared_run.replace(epochs=1), progress=False)
    good = _weights(prepared_run.run_dir)
    original = SeedCNN.forward
    monkeypatch.setattr(SeedCNN, "forward", lambda self, x: original(self, x) * float("nan"))
    with pytest.raises(train_mod.NonFiniteLossError, match="epoch 2, step 1"):
        train_mod.train(prepared_run.replace(epochs=2), resume=True, progress=False)
    after = _weights(prepared_run.run_dir)
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_the_guard_names_the_first_non_finite_step_though_it_syncs_only_every_few_steps(prepared_run, monkeypatch):
    """The loss is checked on the device each step and read on the host every SYNC_EVERY steps
    and at the epoch's end; the message still names the first bad step, not the sync point."""
    original, calls = SeedCNN.forward, []

    def from_third_step(self, x):
        calls.append(self.training)
        out = original(self, x)
        return out * float("inf") if sum(calls) >= 3 else out

    monkeypatch.setattr(SeedCNN, "forward", from_third_step)
    monkeypatch.setattr(
        train_mod, "SYNC_EVERY", 2
    )  # a sync after step 2 (clean), the next one after step 4 or at the end
    with pytest.raises(train_mod.NonFiniteLossError, match=r"loss became (nan|inf) at epoch 1, step 3;"):
        train_mod.train(prepared_run.replace(epochs=1, batch_size=4), progress=False)
    assert not (Path(prepared_run.run_dir) / "checkpoints" / "last.pt").exists()


def test_best_checkpoint_carries_a_validation_temperature_and_config_json_is_untouched(prepared_run):
    config_json = f"{prepared_run.run_dir}/config.json"
    before = open(config_json).read()
    train_mod.train(prepared_run.replace(epochs=1, lr=3e-4), progress=False)  # an override for this call only
    assert open(config_json).read() == before
    state = load_checkpoint(f"{prepared_run.run_dir}/checkpoints/best.pt")
    assert (
        0 < state["temperature"] < float("inf") and state["config"]["lr"] == 3e-4
    )  # chance-level after 1 epoch: T is large


def test_init_checkpoint_starts_a_fine_tune_from_its_weights(prepared_run, tmp_path):
    from brainlib.errors import SettingsError

    train_mod.train(prepared_run.replace(epochs=1), progress=False)
    source = f"{prepared_run.run_dir}/checkpoints/best.pt"
    tuned = prepared_run.replace(
        run_dir=str(tmp_path / "ft"), epochs=1, lr=1e-12, weight_decay=0.0, init_checkpoint=source
    )
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "manifest.csv").write_text((tmp_path / "run" / "manifest.csv").read_text())
    train_mod.train(tuned, progress=False)
    a, b = _weights(prepared_run.run_dir, "best.pt"), _weights(tuned.run_dir)
    conv = [k for k in a if k.endswith("weight") and a[k].dim() == 4]
    assert conv and all(torch.allclose(a[k], b[k], atol=1e-6) for k in conv)
    with pytest.raises(SettingsError, match="holds a seed_cnn"):
        train_mod.train(tuned.replace(model="resnet18_scratch"), progress=False)


def test_weight_average_follows_the_warmed_up_decay_and_copies_integer_buffers():
    from brainlib.ema import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightAverage(model, decay=0.9)
    start = model[0].weight.detach().clone()
    expected = start.clone()
    for step in range(5):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 1
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * model[0].weight.detach()
        ema.update()
    assert torch.allclose(ema.module[0].weight, expected, atol=1e-6)
    assert not torch.allclose(ema.module[0].weight, model[0].weight)
    assert int(ema.module[1].num_batches_tracked) == 5 and ema.updates == 5


def test_a_weight_averaged_run_saves_the_average_and_resumes_exactly(prepared_run, tmp_path):
    from brainlib.checkpoint import load_for_inference

    cfg = prepared_run.replace(ema_decay=0.9)
    train_mod.train(cfg, progress=False)
    last = load_checkpoint(f"{cfg.run_dir}/checkpoints/last.pt")
    assert last["ema_updates"] > 0
    assert any(not torch.equal(last["model_state"][k], last["train_model_state"][k]) for k in last["model_state"])
    again = cfg.replace(run_dir=str(tmp_path / "again"), epochs=1)
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "manifest.csv").write_text((tmp_path / "run" / "manifest.csv").read_text())
    train_mod.train(again, progress=False)
    train_mod.train(again.replace(epochs=2), resume=True, progress=False)
    resumed = load_checkpoint(f"{again.run_dir}/checkpoints/last.pt")
    for key in ("model_state", "train_model_state"):
        assert all(torch.equal(last[key][k], resumed[key][k]) for k in last[key]), key
    net = load_for_inference(f"{cfg.run_dir}/checkpoints/best.pt")  # the average is what gets scored
    assert net.model_name == "seed_cnn"
    with pytest.raises(Exception, match="weight average"):
        train_mod.train(prepared_run.replace(epochs=3), resume=True, progress=False)


def test_the_average_leaves_training_alone_and_export_gives_the_trained_weights(prepared_run, tmp_path):
    """An averaged run's trained weights are the plain run's, bit for bit on the CPU: one run gives
    both sides of the comparison."""
    from brainlib.checkpoint import export_checkpoint

    plain = prepared_run.replace(epochs=1)
    train_mod.train(plain, progress=False)
    averaged = plain.replace(run_dir=str(tmp_path / "avg"), ema_decay=0.9)
    (tmp_path / "avg").mkdir()
    (tmp_path / "avg" / "manifest.csv").write_text((tmp_path / "run" / "manifest.csv").read_text())
    train_mod.train(averaged, progress=False)
    trained = export_checkpoint(
        f"{averaged.run_dir}/checkpoints/last.pt", tmp_path / "trained.pt", trained_weights=True
    )
    got, want = load_checkpoint(trained), load_checkpoint(f"{plain.run_dir}/checkpoints/last.pt")
    assert all(torch.equal(got["model_state"][k], want["model_state"][k]) for k in want["model_state"])
    assert got["config"]["ema_decay"] == 0.0 and "temperature" not in got
    assert "best_val_acc" not in got and want["best_val_acc"] > 0  # the average's, not these weights'
    with pytest.raises(Exception, match="no trained weights besides"):
        export_checkpoint(f"{plain.run_dir}/checkpoints/last.pt", tmp_path / "x.pt", trained_weights=True)


def test_a_model_scored_at_a_larger_side_is_calibrated_at_that_side(prepared_run, monkeypatch):
    from brainlib.calibration import fit_temperature
    from brainlib.checkpoint import load_for_inference
    from brainlib.infer import predict_logits
    from brainlib.loader import load_run_data, split_batches

    monkeypatch.setenv("BRAIN_CPU_ENGINE", "torch")  # scored exactly as the refit scored it
    cfg = prepared_run.replace(model="resnet18_scratch", image_size=64, test_image_size=96, epochs=1)
    train_mod.train(cfg, progress=False)
    state = load_checkpoint(f"{cfg.run_dir}/checkpoints/best.pt")
    assert state["calibrated_size"] == 96 and state["ood"] is not None
    net = load_for_inference(f"{cfg.run_dir}/checkpoints/best.pt")
    assert net.image_size == 96 and net.temperature == state["temperature"]
    # the stored temperature is the one the validation images at 96 px give, not at the 64 px validated at
    val = split_batches(net.scoring_config(cfg), load_run_data(cfg), "val")
    assert val.image_size == 96
    assert state["temperature"] == pytest.approx(fit_temperature(predict_logits(net.model, val, "cpu"), val.labels))
    at_64 = split_batches(cfg, load_run_data(cfg), "val")
    assert state["temperature"] != pytest.approx(fit_temperature(predict_logits(net.model, at_64, "cpu"), at_64.labels))
