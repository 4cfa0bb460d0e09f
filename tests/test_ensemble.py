"""Ensembles and flip test-time augmentation as a checkpoint kind: the averaged output, the checks
on its members, and every scoring path (calibrate, evaluate, predict with Grad-CAM, export) taking it."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainlib import checkpoint, compare
from brainlib.cli import main
from brainlib.config import CLASS_NAMES
from brainlib.data import read_manifest, split_digest
from brainlib.errors import CheckpointError
from brainlib.infer import predict_logits_and_features
from brainlib.models import Ensemble, create_model, member_models


def _models(n=2):
    torch.manual_seed(0)
    return [create_model("resnet18_scratch").eval() for _ in range(n)]


def test_the_ensemble_averages_its_members_log_probabilities_over_both_views():
    a, b = _models()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():

        def lp(m, v):
            return m(v).log_softmax(1)

        plain = Ensemble([a, b], [64, 64])(x)
        flipped = Ensemble([a, b], [64, 64], flip=True)(x)
        mirror = torch.flip(x, dims=[-1])
        assert torch.allclose(plain, (lp(a, x) + lp(b, x)) / 2, atol=1e-6)
        assert torch.allclose(flipped, (lp(a, x) + lp(a, mirror) + lp(b, x) + lp(b, mirror)) / 4, atol=1e-6)
        assert torch.allclose(Ensemble([a], [64], flip=True)(x), (lp(a, x) + lp(a, mirror)) / 2, atol=1e-6)
        # a member trained at a smaller side sees the input resized to it
        small = F.interpolate(x, size=(48, 48), mode="bilinear", antialias=True, align_corners=False)
        assert torch.allclose(Ensemble([a, b], [64, 48])(x), (lp(a, x) + lp(b, small)) / 2, atol=1e-6)
    assert member_models("efficientnet_lite0+efficientnet_lite2+flip") == ["efficientnet_lite0", "efficientnet_lite2"]
    # the comparison table counts every member's parameters
    assert compare._parameter_count("seed_cnn+seed_cnn+flip") == 2 * compare._parameter_count("seed_cnn")


def test_features_of_a_layer_run_twice_per_batch_are_the_mean_of_its_runs():
    a, b = _models()
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    batches = [(x[:3], None), (x[3:], None)]
    pooled = []
    hook = a.layer4[-1].register_forward_hook(lambda _m, _i, out: pooled.append(out.mean((2, 3))))
    with torch.no_grad():
        a(x), a(torch.flip(x, dims=[-1]))
    hook.remove()
    ens = Ensemble([a, b], [64, 64], flip=True)
    logits, features = predict_logits_and_features(ens, batches, "cpu", [a.layer4[-1], b.layer4[-1]])
    assert logits.shape == (5, 4) and features.shape == (5, 2 * 512)
    assert torch.allclose(features[:, :512], (pooled[0] + pooled[1]) / 2, atol=1e-5)


def _member(path, seed=42, model_name="seed_cnn", image_size=224, perturb=0, val_digest=None):
    torch.manual_seed(perturb)
    model = create_model(model_name)
    state = {
        "model_name": model_name,
        "class_names": list(CLASS_NAMES),
        "model_state": model.state_dict(),
        "config": {"seed": seed, "val_fraction": 0.1, "exclude_list": "", "cache_size": 256, "image_size": image_size},
        "temperature": 1.5,
        **({"val_digest": val_digest} if val_digest else {}),
    }
    return checkpoint.save_checkpoint(state, path)


def test_members_must_share_a_validation_carve_and_an_ensemble_is_plain_data(tmp_path):
    a = _member(tmp_path / "a.pt")
    b = _member(tmp_path / "b.pt", perturb=1)
    other_split = _member(tmp_path / "c.pt", seed=43)
    with pytest.raises(CheckpointError, match="another validation carve.*seed 43 vs 42"):
        checkpoint.ensemble_state([a, other_split])
    with pytest.raises(CheckpointError, match="validation images differ"):  # same seed, another copy of the data
        checkpoint.ensemble_state(
            [_member(tmp_path / "d.pt", val_digest="1"), _member(tmp_path / "e.pt", val_digest="2")]
        )
    with pytest.raises(CheckpointError, match="at least one member"):
        checkpoint.ensemble_state([])
    state = checkpoint.ensemble_state([a, b], flip=True)
    assert state["model_name"] == "seed_cnn+seed_cnn+flip" and "temperature" not in state  # refitted for the average
    path = checkpoint.save_checkpoint(state, tmp_path / "ens.pt")
    with pytest.raises(CheckpointError, match="an ensemble already"):
        checkpoint.ensemble_state([path, a])
    net = checkpoint.load_for_inference(path)  # weights_only: nothing but tensors and plain values
    assert isinstance(net.model, Ensemble) and net.model.flip and not net.cam_model.flip
    assert [layer is m.features[-2] for layer, m in zip(net.cam_layers, net.model.members)] == [True, True]
    assert net.image_size == 224 and net.temperature is None


def test_an_ensemble_is_calibrated_evaluated_explained_and_exported(trained_run, fixture_root, tmp_path, capsys):
    run = trained_run.run_dir
    best = checkpoint.load_checkpoint(f"{run}/checkpoints/best.pt")
    assert best["val_digest"] == split_digest(read_manifest(run))  # the carve that selected it
    second = {
        **best,
        "model_state": {k: v * 1.01 if v.is_floating_point() else v for k, v in best["model_state"].items()},
    }
    made = tmp_path / "made"
    checkpoint.save_checkpoint(second, made / "second.pt")
    out = made / "ens.pt"
    loc = ["--run-dir", run, "--data-dir", str(fixture_root), "--num-threads", "1"]
    assert (
        main(["ensemble", f"{run}/checkpoints/best.pt", str(made / "second.pt"), "--flip", "--out", str(out), *loc])
        == 0
    )
    assert sorted(p.name for p in made.iterdir()) == ["ens.pt", "second.pt"]  # no uncalibrated leftover
    report = json.loads(capsys.readouterr().out)
    state = checkpoint.load_checkpoint(out)
    assert state["best_val_acc"] == report["validation"]["ensemble"]["accuracy"]  # what it is chosen on
    assert len(report["validation"]["members"]) == 2 and report["validation"]["ensemble"]["nll"] > 0
    assert state["temperature"] > 0 and state["conformal"]["thresholds"] and state["ood"]["threshold"] is not None

    assert main(["evaluate", "--checkpoint", str(out), "--shift-severities", "", *loc]) == 0
    capsys.readouterr()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (
        metrics["model"] == "seed_cnn+seed_cnn+flip"
        and metrics["n_test"] == (read_manifest(run)["split"] == "test").sum()
    )
    row = compare.compare_runs([tmp_path / "run"]).iloc[0]  # named by its members, not by its first one
    assert row["recipe"].startswith("ensemble: 2 × ") and row["recipe"].endswith(" + flip") and row["seed"] == ""

    assert main(["model-card", "--checkpoint", str(out), "--eval-run", run, "--out", str(tmp_path / "card.md")]) == 0
    card = (tmp_path / "card.md").read_text()
    assert "Ensemble of 2 (the mean of their log-probabilities, each also scoring the mirror image)" in card
    capsys.readouterr()

    image = str(next((fixture_root / "Testing" / "glioma").glob("*.jpg")))
    rc = main(["predict", image, "--checkpoint", str(out), "--json", "--cam", str(tmp_path / "cams"), "--allow-ood"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["model"] == "seed_cnn+seed_cnn+flip"
    assert sum(report["results"][0]["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert len(list((tmp_path / "cams").glob("*_gradcam.png"))) == 1

    assert main(["export", str(out), str(tmp_path / "half.pt"), "--half"]) == 0
    half = checkpoint.load_for_inference(tmp_path / "half.pt")
    full = checkpoint.load_for_inference(out)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert np.allclose(half.model(x).numpy(), full.model(x).numpy(), atol=2e-2)
    assert half.model.flip and half.temperature == full.temperature


def test_calibrate_refuses_a_run_whose_validation_split_did_not_select_the_checkpoint(
    trained_run, fixture_root, tmp_path, capsys
):
    run = trained_run.run_dir
    state = checkpoint.load_checkpoint(f"{run}/checkpoints/best.pt")
    foreign = {k: v for k, v in state.items() if k not in ("temperature", "conformal")} | {"val_digest": "0" * 16}
    checkpoint.save_checkpoint(foreign, tmp_path / "foreign.pt")
    loc = ["--run-dir", run, "--data-dir", str(fixture_root), "--num-threads", "1"]
    assert main(["calibrate", "--checkpoint", str(tmp_path / "foreign.pt"), "--out", str(tmp_path / "c.pt"), *loc]) == 4
    err = capsys.readouterr().err.strip()
    assert "selected on another validation split" in err and "\n" not in err
    assert not (tmp_path / "c.pt").exists()
    # evaluate, which fits what the checkpoint lacks on its run's val split, refuses it the same way
    evaluate_args = ["evaluate", "--checkpoint", str(tmp_path / "foreign.pt"), "--shift-severities", ""]
    evaluate_args += ["--run-dir", str(tmp_path / "eval"), "--data-dir", str(fixture_root), "--num-threads", "1"]
    assert main(evaluate_args) == 4
    assert "selected on another validation split" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "predictions.csv").exists()  # refused before scoring the test split


def test_a_split_seed_fixes_the_validation_images_whatever_the_run_seed(fixture_root, tmp_path, monkeypatch):
    """Seeds of one recipe become ensemble members (and comparable on one carve) with a shared split seed."""
    from brainlib.config import Config
    from brainlib.data import prepare_run

    monkeypatch.setenv("BRAIN_CACHE_DIR", str(tmp_path / "cache"))

    def carve(name, **settings):
        cfg = Config(run_dir=str(tmp_path / name), data_dir=str(fixture_root), **settings)
        return split_digest(prepare_run(cfg, progress=False).manifest)

    assert carve("a", seed=43, split_seed=42) == carve("b", seed=44, split_seed=42) == carve("c", seed=42)
    assert carve("d", seed=43) != carve("c2", seed=42)
    members = [_member(tmp_path / f"m{s}.pt", seed=s, perturb=s) for s in (43, 44)]
    for path in members:  # the same members, now with the split seed their runs would have recorded
        state = checkpoint.load_checkpoint(path)
        checkpoint.save_checkpoint(state | {"config": state["config"] | {"split_seed": 42}}, path)
    assert checkpoint.ensemble_state(members)["model_name"] == "seed_cnn+seed_cnn"
