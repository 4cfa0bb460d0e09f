"""Predict single images with a checkpoint: class, calibrated probabilities, optional Grad-CAM.

With a checkpoint that stores conformal thresholds (calibration.conformal_state), each image also gets
its prediction set at 1 - alpha (default 0.99): every class the model cannot rule out at that
level. A set of more than one class is flagged "uncertain: review".

Each image is handled on its own: a missing or unreadable file yields an error entry for that
image while the others are still predicted. Scoring goes through the same path as `evaluate`
(decode with data.read_gray at the checkpoint's cache size, CachedBatches, infer.predict_logits
in fp32), so both give the same answer for the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import ood
from .calibration import DEFAULT_ALPHA, calibrate, prediction_sets, set_classes
from .cam import compute_cams, overlay
from .checkpoint import InferenceModel, default_checkpoint, load_for_inference
from .config import CLASS_NAMES, REPO_ROOT
from .data import IMAGE_ERRORS, read_gray
from .errors import DataError, SettingsError
from .loader import CachedBatches
from .medical import NIFTI_SUFFIXES, dicom_series, is_medical, read_dicom, read_nifti, resized

# below this fraction of the model's input side, an image holds too little detail to trust
SMALL_IMAGE_FRACTION = 0.5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def expand_inputs(paths: list[str]) -> tuple[list[str], list[str]]:
    """(inputs, skipped). Files as given; a folder becomes the image, DICOM and NIfTI files inside it
    (recursively; images and volumes sorted by path, a DICOM series in InstanceNumber order), or stays
    itself when it holds none (then reported as such). `skipped`: the other files found in folders (notes,
    spreadsheets, hidden files), so that the caller can say how many were not read rather than drop them
    unseen."""
    out, skipped = [], []
    for path in map(Path, paths):
        inside = []
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file())
            readable = [
                f for f in files if f.suffix.lower() in IMAGE_SUFFIXES or str(f).lower().endswith(NIFTI_SUFFIXES)
            ]
            chosen = set(readable)
            series = dicom_series([f for f in files if f not in chosen])
            inside = [str(f) for f in readable + series]
            taken = set(inside)
            skipped += [str(f) for f in files if str(f) not in taken]
        out += inside or [str(path)]
    return out, skipped


def _read_slices(path: str, axis: int, index: int | None) -> list[tuple[str, np.ndarray]]:
    """The slices of a file is_medical accepted: NIfTI by its name, otherwise DICOM (whose header
    is_medical has already read, so it is not sniffed again)."""
    if not Path(path).exists():
        raise FileNotFoundError(path)
    if str(path).lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(path, axis, index)
    return read_dicom(path)


def _decode_all(
    paths: list[str], size: int, axis: int = 2, index: int | None = None
) -> tuple[list[dict], list[np.ndarray]]:
    """One entry per image, or per slice of a DICOM or NIfTI file, with its image at `size`."""
    entries, images = [], []
    for path in paths:
        entry: dict = {"path": str(path)}
        try:
            if is_medical(path):
                for label, image in _read_slices(path, axis, index):
                    h, w = image.shape
                    entries.append({"path": str(path), **({"slice": label} if label else {}), "size": (w, h)})
                    images.append(resized(image, size))
                continue
            gray, entry["size"] = read_gray(path, size)
            images.append(gray)
        except FileNotFoundError:
            entry["error"] = "file not found"
        except IsADirectoryError:
            entry["error"] = "a folder with no image files"
        except DataError as err:
            entry["error"] = str(err)
        except IMAGE_ERRORS as err:
            entry["error"] = f"not a readable image ({type(err).__name__}: {err})"
        entries.append(entry)
    return entries, images


def predict_images(
    paths: list[str],
    checkpoint: str | Path | None = None,
    cam_dir: str | Path | None = None,
    device: str = "cpu",
    alpha: float = DEFAULT_ALPHA,
    allow_ood: bool = False,
    axis: int = 2,
    index: int | None = None,
) -> dict:
    """{checkpoint, model, image_size, temperature, results, volumes}: one result per image or slice,
    {path, [slice], class, probabilities, out_of_distribution, ood_score, [prediction_set, coverage,
    uncertain], [warning], [cam]} or {path, error}. An input the checkpoint's OOD detector flags gets
    class None and a reason, unless allow_ood (then its class, marked)."""
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
    net = load_for_inference(checkpoint, device)
    threshold = set_threshold(net, alpha)
    # before any image is scored: a folder that cannot be made is one line, not a traceback at the first overlay
    if cam_dir:
        try:
            Path(cam_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"--cam {cam_dir}: cannot make that folder ({err.strerror})") from None
    report = {
        "checkpoint": _shown(checkpoint),
        "model": net.model_name,
        "image_size": net.image_size,
        "temperature": net.temperature,
        "ood_threshold": (net.ood or {}).get("threshold"),
        "results": [],
    }
    entries, images = _decode_all(paths, net.cache_size, axis, index)
    report["results"] = entries
    ok = [e for e in entries if "error" not in e]
    if ok:
        batches = CachedBatches(np.stack(images), np.zeros(len(images), int), 32, net.image_size, device=device)
        logits, scores = ood.logits_and_scores(net, batches, device)
        probs = calibrate(logits, net.temperature).numpy()
        for k, entry in enumerate(ok):
            _describe(entry, net, probs[k], None if scores is None else float(scores[k]), threshold, alpha, allow_ood)
            if cam_dir and entry["class"] is not None:
                x, _ = batches.batch([k])
                stem = Path(entry["path"]).name.split(".")[0] + (
                    "_" + entry["slice"].replace(" ", "") if "slice" in entry else ""
                )
                entry["cam"] = str(_write_cam(net, x, int(probs[k].argmax()), Path(cam_dir), stem))
    report["volumes"] = _volumes(entries)
    return report


def _describe(
    entry: dict, net: InferenceModel, probs: np.ndarray, score: float | None, threshold, alpha, allow_ood
) -> None:
    w, h = entry.pop("size")
    outside = score is not None and score > net.ood["threshold"]
    entry["out_of_distribution"] = outside if score is not None else None
    entry["ood_score"] = None if score is None else round(score, 3)
    if outside:
        entry["reason"] = (
            f"out of distribution: OOD score {score:.1f} above the threshold {net.ood['threshold']:.1f} (the "
            "model knows brain MRI slices like its training images; this input is unlike them)"
        )
    if outside and not allow_ood:
        entry["class"] = None
        return
    entry["class"] = CLASS_NAMES[int(probs.argmax())]
    entry["probabilities"] = {name: round(float(p), 4) for name, p in zip(CLASS_NAMES, probs, strict=True)}
    if threshold is not None:
        entry["prediction_set"] = set_classes(prediction_sets(probs[None], threshold))[0]
        entry["coverage"] = 1 - alpha
        entry["uncertain"] = len(entry["prediction_set"]) > 1
    if min(w, h) < SMALL_IMAGE_FRACTION * net.image_size:
        entry["warning"] = (
            f"image is {w}x{h} px, far below the {net.image_size} px the model scores at: treat the result with care"
        )


def _volumes(entries: list[dict]) -> list[dict]:
    """Per file with several slices (a NIfTI volume, a multi-frame DICOM): slices, classes, OOD flags."""
    out = []
    for path in dict.fromkeys(e["path"] for e in entries if "slice" in e):
        rows = [e for e in entries if e["path"] == path and "error" not in e]
        classes = [e["class"] for e in rows if e.get("class")]
        out.append(
            {
                "path": path,
                "slices": len(rows),
                "classes": {c: classes.count(c) for c in CLASS_NAMES if c in classes},
                "out_of_distribution": sum(bool(e.get("out_of_distribution")) for e in rows),
            }
        )
    return out


def _shown(path: Path) -> str:
    """The checkpoint's path relative to the repo when inside it (checkpoints/...), else as given."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def set_threshold(net: InferenceModel, alpha: float) -> float | None:
    """The checkpoint's conformal threshold at alpha; None when it stores none (then no sets)."""
    thresholds = (net.conformal or {}).get("thresholds", {})
    if net.conformal and str(alpha) not in thresholds:
        raise SettingsError(
            f"alpha {alpha} is not calibrated in this checkpoint; it has {', '.join(sorted(thresholds))}"
        )
    return thresholds.get(str(alpha))


def _write_cam(net: InferenceModel, x: torch.Tensor, target: int, cam_dir: Path, stem: str) -> Path:
    cam_dir.mkdir(parents=True, exist_ok=True)
    heat = overlay(x[0], compute_cams(net.cam_model, x, [target], layers=net.cam_layers)[0])
    out = cam_dir / f"{stem}_gradcam.png"
    Image.fromarray(np.asarray(heat, dtype=np.uint8)).save(out)
    return out
