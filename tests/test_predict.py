"""predict: every image mode, bad files reported per image, EXIF orientation, tiny images flagged,
and the same answer as evaluate for the same file."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainlib import calibration, evaluate
from brainlib.cli import main
from brainlib.config import CLASS_NAMES, REPO_ROOT
from brainlib.loader import load_run_data
from brainlib.predict import expand_inputs, predict_images


def test_predict_cli_handles_every_mode_and_reports_bad_files(trained_run, fixture_root, tmp_path, capsys):
    gray = Image.open(next((fixture_root / "Testing" / "glioma").glob("*.jpg"))).convert("L")
    files = {
        "gray.jpg": lambda p: gray.save(p),
        "rgba.png": lambda p: gray.convert("RGBA").save(p),
        "palette.png": lambda p: gray.convert("P").save(p),
        "sixteen.png": lambda p: Image.fromarray(np.asarray(gray).astype(np.uint16) * 200).save(p),
        "large.jpg": lambda p: gray.resize((8000, 8000)).save(p, quality=50),
        "text.jpg": lambda p: p.write_text("hello"),
    }
    for name, make in files.items():
        make(tmp_path / name)
    args = [str(tmp_path / n) for n in files] + [str(tmp_path / "missing.jpg")]
    ckpt = f"{trained_run.run_dir}/checkpoints/best.pt"
    # a fixture-trained model flags much as out of distribution: these tests are about everything else
    rc = main(["predict", *args, "--checkpoint", ckpt, "--json", "--cam", str(tmp_path / "cams"), "--allow-ood"])
    out = capsys.readouterr()
    assert rc == 1  # some inputs were bad ...
    report = json.loads(out.out)
    assert report["checkpoint"] == ckpt and report["model"] == "seed_cnn" and report["image_size"] == 224
    results = {r["path"].split("/")[-1]: r for r in report["results"]}
    for name in ("gray.jpg", "rgba.png", "palette.png", "sixteen.png", "large.jpg"):  # ... the rest still predicted
        assert results[name]["class"] in CLASS_NAMES
        assert sum(results[name]["probabilities"].values()) == pytest.approx(1, abs=1e-3)
        assert (tmp_path / "cams" / f"{name.split('.')[0]}_gradcam.png").exists()
    assert "not a readable image" in results["text.jpg"]["error"]
    assert results["missing.jpg"]["error"] == "file not found"
    assert "missing.jpg: file not found" in out.err


def test_predict_cli_refuses_a_bad_checkpoint_in_one_line(tmp_path, fixture_root, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["predict", str(next(fixture_root.rglob("*.jpg"))), "--checkpoint", str(tmp_path / "bad.pt")]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.pt is not a checkpoint" in err and "\n" not in err
    assert "weights_only" not in err  # never torch's advice to unpickle it anyway


def test_a_cam_folder_that_cannot_be_made_is_one_line_before_any_image(tmp_path, fixture_root, capsys):
    (tmp_path / "a_file").write_text("")
    image = str(next(fixture_root.rglob("*.jpg")))
    seed_cnn = str(REPO_ROOT / "checkpoints" / "seed_cnn.pt")
    rc = main(["predict", image, "--checkpoint", seed_cnn, "--cam", str(tmp_path / "a_file" / "cams")])
    captured = capsys.readouterr()
    assert (
        rc == 3  # as for any folder that cannot be made
        and captured.err.strip()
        == f"error: --cam {tmp_path / 'a_file' / 'cams'}: cannot make that folder (Not a directory)"
    )
    assert "glioma" not in captured.out  # refused before scoring, not after


def test_predict_and_evaluate_agree_image_by_image(trained_run, fixture_root):
    pred, logits, _ = evaluate.predict_test(trained_run, load_run_data(trained_run), shifts=False)
    ckpt = f"{trained_run.run_dir}/checkpoints/best.pt"
    report = predict_images([str(fixture_root / p) for p in pred["path"]], ckpt, allow_ood=True)
    results = report["results"]
    probs = pd.DataFrame([r["probabilities"] for r in results])
    assert report["temperature"] is not None
    assert [r["class"] for r in results] == list(pred["pred"])
    expected = calibration.calibrated_probabilities(logits, report["temperature"])
    assert np.allclose(probs[list(CLASS_NAMES)].to_numpy(), expected, atol=1e-4)
    # predictions.csv carries what predict prints: calibrated probabilities and the 99 % set
    written = pred[[f"p_calibrated_{c}" for c in CLASS_NAMES]].to_numpy()
    assert np.allclose(written, probs[list(CLASS_NAMES)].to_numpy(), atol=1e-4)
    assert not np.allclose(written, pred[[f"p_{c}" for c in CLASS_NAMES]].to_numpy(), atol=1e-4)
    assert list(pred["prediction_set"]) == ["|".join(r["prediction_set"]) for r in results]


def test_a_folder_is_expanded_to_its_images_sorted_and_the_text_names_the_checkpoint(trained_run, tmp_path, capsys):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    src = next(fixture_root_images(trained_run))
    for name in ("b.jpg", "a.png", "sub/c.jpg"):
        Image.open(src).convert("L").save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub" / ".DS_Store").write_bytes(b"\0" * 200)
    assert expand_inputs([str(folder)]) == (
        [str(folder / n) for n in ("a.png", "b.jpg", "sub/c.jpg")],
        [str(folder / "notes.txt"), str(folder / "sub" / ".DS_Store")],
    )
    ckpt = f"{trained_run.run_dir}/checkpoints/best.pt"
    assert main(["predict", str(folder), "--checkpoint", ckpt, "--allow-ood"]) == 0  # a skipped note is no error
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0] == f"checkpoint: {ckpt} (seed_cnn, 224 px)" and len(out) == 4
    assert captured.err.splitlines() == [
        "skipped 2 file(s) in the folders given: not images, DICOM or NIfTI (notes.txt, .DS_Store)"
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(["predict", str(empty), "--checkpoint", ckpt, "--allow-ood"]) == 1
    )  # nothing inside: said, not a traceback
    assert "a folder with no image files" in capsys.readouterr().err


def test_exif_orientation_is_applied_and_tiny_images_are_flagged(trained_run, fixture_root, tmp_path):
    src = Image.open(next((fixture_root / "Testing" / "pituitary").glob("*.jpg"))).convert("L")
    upright = src.resize((200, 120))
    upright.save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; viewers rotate it 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.jpg", quality=95, exif=exif)
    src.resize((8, 8)).save(tmp_path / "tiny.png")
    ckpt = f"{trained_run.run_dir}/checkpoints/best.pt"
    a, b, tiny = predict_images(
        [str(tmp_path / n) for n in ("upright.jpg", "turned.jpg", "tiny.png")], ckpt, allow_ood=True
    )["results"]
    assert a["probabilities"] == pytest.approx(b["probabilities"], abs=0.02)
    assert "warning" not in a and "8x8 px" in tiny["warning"]


def test_predict_prints_prediction_sets_and_flags_more_than_one_class(trained_run, fixture_root, tmp_path, capsys):
    from brainlib.checkpoint import load_checkpoint, save_checkpoint

    ckpt = f"{trained_run.run_dir}/checkpoints/best.pt"
    state = load_checkpoint(ckpt)
    assert set(state["conformal"]["thresholds"]) == {"0.01", "0.05"}  # the training loop stored them
    image = str(next((fixture_root / "Testing" / "glioma").glob("*.jpg")))
    result = predict_images([image], ckpt, allow_ood=True)["results"][0]
    assert result["class"] in result["prediction_set"] and result["coverage"] == pytest.approx(0.99)
    assert result["uncertain"] == (len(result["prediction_set"]) > 1)
    # a threshold of 1 (too few calibration images for 99 %) keeps every class: review
    wide = tmp_path / "wide.pt"
    save_checkpoint(state | {"conformal": {**state["conformal"], "thresholds": {"0.01": 1.0, "0.05": 0.0}}}, wide)
    assert main(["predict", image, "--checkpoint", str(wide), "--allow-ood"]) == 0
    line = capsys.readouterr().out
    assert "99% set: {glioma, meningioma, notumor, pituitary}  uncertain: review" in line
    assert main(["predict", image, "--checkpoint", str(wide), "--alpha", "0.05", "--allow-ood"]) == 0
    assert (
        "95% set: {" in (out := capsys.readouterr().out) and "uncertain" not in out
    )  # threshold 0: the top class only
    assert main(["predict", image, "--checkpoint", str(wide), "--alpha", "0.1"]) == 2
    assert capsys.readouterr().err.strip() == "error: alpha 0.1 is not calibrated in this checkpoint; it has 0.01, 0.05"


def test_calibrate_adds_conformal_thresholds_to_an_old_checkpoint(trained_run, tmp_path):
    from brainlib.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(f"{trained_run.run_dir}/checkpoints/best.pt")
    old = tmp_path / "old.pt"
    save_checkpoint({k: v for k, v in state.items() if k != "conformal"}, old)
    assert (
        "prediction_set"
        not in predict_images([str(next(fixture_root_images(trained_run)))], old, allow_ood=True)["results"][0]
    )
    before = old.read_bytes()
    out = tmp_path / "calibrated.pt"
    assert main(["calibrate", "--checkpoint", str(old), "--out", str(out), "--run-dir", trained_run.run_dir]) == 0
    assert old.read_bytes() == before
    new = load_checkpoint(out)
    assert new["temperature"] == state["temperature"]  # kept, not refitted
    assert new["conformal"]["thresholds"] == pytest.approx(
        state["conformal"]["thresholds"]
    )  # same val split, same weights


def test_calibrate_refit_replaces_what_the_checkpoint_has(trained_run, tmp_path):
    from brainlib.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(f"{trained_run.run_dir}/checkpoints/best.pt")
    # as if fitted on other pixels: a temperature and a detector threshold no fit on this carve gives
    stale = state | {"temperature": 7.5, "ood": state["ood"] | {"threshold": -1.0}}
    src = save_checkpoint(stale, tmp_path / "stale.pt")
    loc = ["--run-dir", trained_run.run_dir, "--num-threads", "1"]
    kept, refit = tmp_path / "kept.pt", tmp_path / "refit.pt"
    assert main(["calibrate", "--checkpoint", str(src), "--out", str(kept), *loc]) == 0
    assert load_checkpoint(kept)["temperature"] == 7.5  # without the flag, what it has is kept
    assert main(["calibrate", "--checkpoint", str(src), "--out", str(refit), "--refit", *loc]) == 0
    new = load_checkpoint(refit)
    # the same carve and weights: the fit train made, up to the scoring path's rounding
    assert new["temperature"] == pytest.approx(state["temperature"], rel=1e-3)
    assert new["ood"]["threshold"] == pytest.approx(state["ood"]["threshold"], rel=1e-3)
    assert new["calibrated_size"] == state["calibrated_size"]


def test_calibrate_at_another_side_fits_everything_again_there(trained_run, tmp_path, capsys):
    from brainlib.checkpoint import load_checkpoint, load_for_inference, save_checkpoint, scoring_size
    from brainlib.models import create_model

    state = load_checkpoint(f"{trained_run.run_dir}/checkpoints/best.pt")
    loc = ["--run-dir", trained_run.run_dir, "--num-threads", "1"]
    # the reference CNN's head fixes its side: one line, no copy
    refused = [
        "calibrate",
        "--checkpoint",
        f"{trained_run.run_dir}/checkpoints/best.pt",
        "--out",
        str(tmp_path / "x.pt"),
    ]
    assert main([*refused, "--scoring-size", "256", *loc]) == 2
    assert "takes" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    # a model of any side, selected on the same carve, calibrated at its training side (224)
    resnet = {
        **state,
        "model_name": "resnet18_scratch",
        "model_state": create_model("resnet18_scratch").state_dict(),
        "config": state["config"] | {"model": "resnet18_scratch", "image_size": 224, "test_image_size": 0},
    }
    src = save_checkpoint(resnet, tmp_path / "resnet.pt")
    out = tmp_path / "at256.pt"
    assert main(["calibrate", "--checkpoint", str(src), "--out", str(out), "--scoring-size", "256", *loc]) == 0
    new = load_checkpoint(out)
    assert scoring_size(new) == 256 and new["calibrated_size"] == 256
    net = load_for_inference(out)
    assert net.image_size == 256 and net.temperature is not None and net.ood is not None  # used at 256, not ignored
    assert new["temperature"] != state["temperature"]  # fitted again for these weights, not copied


def fixture_root_images(cfg):
    from pathlib import Path

    return (Path(cfg.data_dir) / "Testing").rglob("*.jpg")
