"""Images that are not brain MRI slices, in families, for measuring the out-of-distribution detector;
and the measurement itself.

Everything is built offline from packages the environment already has, under their own licences:
scikit-image's bundled sample images (public domain or CC0; `skimage.data`), pydicom's bundled test
files (CT, nuclear medicine, ultrasound, an abdominal MRI), and images drawn here. Families:

- tuning (the score is chosen on these): `synthetic` (noise, blank, gradients, checkerboards) and
  `photographs` (people, animals, objects, textures, the sky);
- held out (reported, never looked at while choosing): `documents` (scanned and rendered text, a logo),
  `microscopy` (cells, stained tissue, retinal vessels) and `other_medical` (CT slices including a head CT,
  a bone scan, ultrasound, an abdominal MRI, a fundus photograph, the Shepp-Logan head phantom).

The threshold is never fitted on any of them: it is the validation images' 99th percentile.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from . import ood
from .atomic import atomic_path, write_text
from .calibration import ood_statistics
from .checkpoint import InferenceModel
from .config import Config
from .data import to_gray
from .infer import predict_logits_and_features
from .loader import CachedBatches, RunData, rows_batches
from .medical import read_dicom, resized
from .robustness import sample_rows
from .shifts import SHIFTS

TUNING = ("synthetic", "photographs")
HELD_OUT = ("documents", "microscopy", "other_medical")
TEXT = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 6,
    "Patient history: headache for three weeks; no focal deficit. Request: MRI brain with contrast. " * 4,
    "def main():\n    return 0\n" * 12,
    "Quarterly report  Revenue  Costs  Margin\n 2024  1,204  980  18.6 %\n" * 8,
)


@dataclass
class OodImage:
    family: str
    name: str
    image: np.ndarray  # uint8 grayscale, any size


def _skimage(name: str):
    from skimage import data

    return getattr(data, name)()


def _gray(array: np.ndarray) -> np.ndarray:
    return np.asarray(to_gray(Image.fromarray(np.asarray(array).astype(np.uint8))))


def _synthetic() -> list[OodImage]:
    rng = np.random.default_rng(0)
    side = 256
    ramp = np.linspace(0, 255, side)
    yy, xx = np.mgrid[:side, :side]
    radial = np.hypot(yy - side / 2, xx - side / 2)
    images = {
        "uniform_noise_1": rng.integers(0, 256, (side, side)),
        "uniform_noise_2": rng.integers(0, 256, (side, side)),
        "gaussian_noise": np.clip(rng.normal(128, 40, (side, side)), 0, 255),
        "smooth_noise": np.asarray(
            Image.fromarray(rng.integers(0, 256, (16, 16)).astype(np.uint8)).resize((side, side), Image.BICUBIC)
        ),
        "salt_and_pepper": np.where(rng.random((side, side)) < 0.1, 255, 0),
        "black": np.zeros((side, side)),
        "white": np.full((side, side), 255),
        "grey": np.full((side, side), 128),
        "gradient_horizontal": np.tile(ramp, (side, 1)),
        "gradient_vertical": np.tile(ramp[:, None], (1, side)),
        "gradient_radial": 255 * radial / radial.max(),
        "checkerboard_8": 255 * (((yy // 8) + (xx // 8)) % 2),
        "checkerboard_32": 255 * (((yy // 32) + (xx // 32)) % 2),
        "stripes": 255 * ((xx // 12) % 2),
    }
    return [OodImage("synthetic", k, np.asarray(v, np.uint8)) for k, v in images.items()]


def _photographs() -> list[OodImage]:
    names = (
        "astronaut",
        "camera",
        "cat",
        "coffee",
        "coins",
        "horse",
        "rocket",
        "moon",
        "hubble_deep_field",
        "brick",
        "grass",
        "gravel",
    )
    out = [OodImage("photographs", n, _gray(np.asarray(_skimage(n)) * (255 if n == "horse" else 1))) for n in names]
    left = _skimage("stereo_motorcycle")[0]
    out.append(OodImage("photographs", "motorcycle", _gray(left)))
    faces = _skimage("lfw_subset")[:6]
    out += [OodImage("photographs", f"face_{k}", (255 * f).astype(np.uint8)) for k, f in enumerate(faces)]
    return out


def _rendered_text(text: str, side: int = 512) -> np.ndarray:
    page = Image.new("L", (side, side), 245)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=16)
    lines, line = [], ""
    for word in text.replace("\n", " \n ").split(" "):
        if word == "\n" or draw.textlength(line + " " + word, font=font) > side - 40:
            lines.append(line)
            line = "" if word == "\n" else word
        else:
            line = f"{line} {word}".strip()
    draw.multiline_text((20, 20), "\n".join([*lines, line]), fill=20, font=font, spacing=6)
    return np.asarray(page)


def _documents() -> list[OodImage]:
    out = [OodImage("documents", n, _gray(_skimage(n))) for n in ("page", "text", "logo")]
    out += [OodImage("documents", f"rendered_text_{k}", _rendered_text(t)) for k, t in enumerate(TEXT)]
    return out


def _microscopy() -> list[OodImage]:
    return [OodImage("microscopy", n, _gray(_skimage(n))) for n in ("cell", "immunohistochemistry", "microaneurysms")]


def _other_medical() -> list[OodImage]:
    from pydicom.data import get_testdata_file

    out = [
        OodImage("other_medical", "fundus_photograph", _gray(_skimage("retina"))),
        OodImage("other_medical", "shepp_logan_phantom", (255 * _skimage("shepp_logan_phantom")).astype(np.uint8)),
    ]
    files = {
        "ct_slice": "CT_small.dcm",
        "ct_slice_512": "693_J2KI.dcm",
        "head_ct": "J2K_pixelrep_mismatch.dcm",
        "bone_scan": "JPEG2000.dcm",
        "ultrasound_colour": "examples_rgb_color.dcm",
        "ultrasound_palette": "examples_palette.dcm",
        "abdominal_mri": "examples_overlay.dcm",
    }
    for name, file in files.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                (_, image), *_ = read_dicom(get_testdata_file(file))
            except Exception:  # a test file this pydicom cannot decode here: the family is smaller, not wrong
                continue
        out.append(OodImage("other_medical", name, image))
    return out


def ood_suite() -> list[OodImage]:
    return _synthetic() + _photographs() + _documents() + _microscopy() + _other_medical()


def _logits_and_features(net: InferenceModel, images: np.ndarray, device: str):
    batches = CachedBatches(images, np.zeros(len(images), int), 64, net.image_size, device=device)
    return predict_logits_and_features(net.model, batches, device, net.feature_layers)


def _scores(net: InferenceModel, stats: dict, images: np.ndarray, device: str) -> dict[str, np.ndarray]:
    logits, features = _logits_and_features(net, images, device)
    return {kind: ood.score(stats, features, logits, kind) for kind in ood.SCORES}


def measure(net: InferenceModel, cfg: Config, data: RunData, device: str, shift_sample: int = 400) -> dict:
    """Every score (ood.SCORES) with its own validation threshold on: the clean test split, the test
    images under every shift at the middle severity (a stratified sample), and each OOD family.
    A checkpoint with a detector is measured with it: its statistics for every score and its own threshold
    for its score; the other scores' thresholds from today's validation split.
    Returns {"scores": long table of per-image scores, "summary": per (score, family) rates and AUROC,
    "thresholds": {score: threshold}, "chosen": the score with the best mean AUROC on the tuning families,
    "detector": where the statistics came from}."""
    cfg = net.scoring_config(cfg)
    # the detector the checkpoint carries (what predict and evaluate flag with), not a refit: its threshold
    # rests on the validation split's six highest scores, and re-carving that split by three images moved a
    # refitted Mahalanobis threshold from 358 to 300
    stats, val_features, val_logits = ood_statistics(net, cfg, data, device, stats=net.ood or None)
    thresholds = {k: ood.threshold_for(ood.score(stats, val_features, val_logits, k)) for k in ood.SCORES}
    if net.ood:
        thresholds[net.ood["score"]] = float(net.ood["threshold"])
    frames = []

    def add(group: str, family: str, names, scores: dict[str, np.ndarray]) -> None:
        frames.append(pd.DataFrame({"group": group, "family": family, "name": list(names), **scores}))

    test_rows = data.rows("test")
    test = rows_batches(cfg, data, test_rows, device)
    t_logits, t_features = predict_logits_and_features(net.model, test, device, net.feature_layers)
    add(
        "in_distribution",
        "test_clean",
        data.manifest["path"].to_numpy()[test_rows],
        {k: ood.score(stats, t_features, t_logits, k) for k in ood.SCORES},
    )
    rows = sample_rows(test_rows, data.manifest["label_idx"].to_numpy()[test_rows], shift_sample, cfg.seed)
    clean = np.asarray(data.images[rows])
    for shift in SHIFTS.values():
        add(
            "in_distribution",
            f"shift:{shift.name}",
            data.manifest["path"].to_numpy()[rows],
            _scores(net, stats, shift(clean, 2), device),
        )
    suite = ood_suite()  # decodes every image and DICOM file: once
    for family in TUNING + HELD_OUT:
        members = [im for im in suite if im.family == family]
        images = np.stack([resized(im.image, cfg.cache_size) for im in members])
        add(
            "tuning" if family in TUNING else "held_out",
            family,
            [im.name for im in members],
            _scores(net, stats, images, device),
        )
    scores = pd.concat(frames, ignore_index=True)
    clean_scores = scores[scores["family"] == "test_clean"]
    summary = []
    for kind in ood.SCORES:
        for family, part in scores.groupby("family", sort=False):
            flagged = float((part[kind] > thresholds[kind]).mean())
            row = {"score": kind, "family": family, "group": part["group"].iloc[0], "n": len(part), "flagged": flagged}
            if part["group"].iloc[0] != "in_distribution":
                row["auroc_vs_clean_test"] = ood.detection_auroc(clean_scores[kind].to_numpy(), part[kind].to_numpy())
            summary.append(row)
    summary = pd.DataFrame(summary)
    tuning = summary[summary["group"] == "tuning"].groupby("score")["auroc_vs_clean_test"].mean()
    detector = {  # a stored detector carries its score and validation count; statistics fitted here do not
        "from": "checkpoint" if net.ood else "fitted here",
        "score": stats.get("score"),
        "n_fit": stats["n_fit"],
        "n_threshold": stats.get("n_threshold", len(val_features)),
    }
    return {
        "scores": scores,
        "summary": summary,
        "thresholds": thresholds,
        "chosen": str(tuning.idxmax()),
        "detector": detector,
    }


def suite_scores(net: InferenceModel, device: str) -> pd.DataFrame:
    """The checkpoint's own OOD score (and flag) for every image of the suite: family, name, score, flagged."""
    images = ood_suite()
    logits, features = _logits_and_features(net, np.stack([resized(im.image, net.cache_size) for im in images]), device)
    scores = ood.score(net.ood, features, logits)
    return pd.DataFrame(
        {
            "family": [im.family for im in images],
            "held_out": [im.family in HELD_OUT for im in images],
            "name": [im.name for im in images],
            "score": scores,
            "flagged": ood.flagged(net.ood, scores),
        }
    )


def write_report(result: dict, out_dir: str | Path) -> Path:
    """scores.csv, summary.csv and report.json (thresholds, the chosen score, the summary) in out_dir."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "scores.csv") as tmp:
        result["scores"].to_csv(tmp, index=False)
    with atomic_path(out_dir / "summary.csv") as tmp:
        result["summary"].to_csv(tmp, index=False)
    report = {
        "thresholds": result["thresholds"],
        "chosen": result["chosen"],
        "detector": result.get("detector"),
        "summary": result["summary"].to_dict("records"),
    }
    return write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
