"""Robustness: the test images re-processed by every shift of the suite (brainlib.shifts), scored
through the one inference path, and the table's summary as a typed object that evaluate,
compare, the model card and notebook 04 share."""

from __future__ import annotations

import hashlib
import importlib.metadata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import cpu_engine, infer, loader, models, ood, shifts
from .atomic import atomic_path
from .calibration import calibrate, prediction_sets, set_coverage
from .checkpoint import InferenceModel
from .config import CLASS_NAMES, Config, default_cache_dir
from .errors import SettingsError
from .loader import RunData, rows_batches
from .progress import progress
from .shifts import SEVERITIES, SHIFTS
from .stats import proportion_interval

NOTUMOR = CLASS_NAMES.index("notumor")


def sample_rows(rows: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded, class-stratified subset of n of `rows` (all of them when n is 0 or too large)."""
    if not n or n >= len(rows):
        return rows
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = rows[labels == c]
        k = max(1, round(n * len(members) / len(rows)))
        picked.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


# what a shifted image's logits depend on besides the weights and pixels: the code that makes and
# scores it, and the libraries behind the transforms
_SCORING_CODE = (shifts, loader, infer, models, ood, cpu_engine)
_SHIFT_LIBRARIES = ("torch", "opencv-python-headless", "scikit-image", "torchio", "monai", "PyWavelets", "numpy")


def _update(h, value) -> None:
    if isinstance(value, torch.Tensor | np.ndarray):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        h.update(str((array.dtype, array.shape)).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(str(key).encode())
            _update(h, value[key])
    else:
        h.update(repr(value).encode())


def scoring_fingerprint(net: InferenceModel, clean: np.ndarray, device: str = "cpu") -> str:
    """A digest of everything a shift-suite row's logits and OOD scores depend on: the weights as
    scored, the input size, the OOD detector, the clean pixels, the kind of device (a GPU's kernels
    round differently), the scoring and shift code and the transform libraries' versions. Equal
    digests, equal logits; anything changed, a new digest."""
    h = hashlib.sha256()
    _update(h, net.cam_model.state_dict())  # the PyTorch weights, whichever engine runs them
    _update(
        h,
        {
            # an ensemble's name says whether it adds the mirror view, and its members' sides are not weights
            "model": net.model_name,
            "member_sizes": getattr(net.model, "sizes", None),
            "image_size": net.image_size,
            "ood": net.ood,
            "pixels": clean,
            "device": torch.device(device).type,
            "engine": net.engine,
        },
    )
    for module in _SCORING_CODE:
        h.update(Path(module.__file__).read_bytes())
    for name in _SHIFT_LIBRARIES:
        try:
            h.update(f"{name}=={importlib.metadata.version(name)}".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{name} absent".encode())
    return h.hexdigest()[:24]


def shift_logits_dir(cfg: Config) -> Path:
    return (Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()) / "shift-logits"


def shift_table(
    cfg: Config,
    data: RunData,
    net: InferenceModel,
    device: str,
    severities=SEVERITIES,
    sample: int = 0,
    calibration: dict | None = None,
    prefetch: bool | None = None,
) -> pd.DataFrame:
    """Accuracy, tumour recall (a tumour called anything but notumor) and predicted-class counts
    on the test images, clean and under every shift of the suite at each severity; with a
    calibration (calibration_of), the coverage and mean size of the conformal prediction sets; with
    an OOD detector in the checkpoint, the share of images it flags (a shifted MRI is still an MRI:
    every flag here is a false alarm).
    Each accuracy carries its 95 % bootstrap interval over the images scored (a sample of 400
    pins a shift's accuracy near 98 % to about +-1.5 points).
    A progress bar counts the (shift, severity) pairs: the full table is 75 passes over the
    images (EfficientNet-Lite0 at 256 px: 14 min on a 2-core Xeon with AVX-512 scoring in ONNX Runtime)."""
    rows = data.rows("test")
    rows = sample_rows(rows, data.manifest["label_idx"].to_numpy()[rows], sample, cfg.seed)
    labels = data.manifest["label_idx"].to_numpy()[rows]
    clean = np.asarray(data.images[rows])
    tumour = labels != NOTUMOR
    records = []

    fingerprint = scoring_fingerprint(net, clean, device)
    store = shift_logits_dir(cfg)
    reused = 0

    def stored(name: str, severity: int) -> Path:
        return store / f"{fingerprint}-{name}-s{severity}.npz"

    def scores(make_images, name: str, severity: int) -> tuple[torch.Tensor, np.ndarray | None]:
        """Logits and OOD scores of one (shift, severity), from the store when this checkpoint
        already scored these pixels under it: compare, the model card and a re-run then cost nothing."""
        nonlocal reused
        path = stored(name, severity)
        if path.exists():
            try:
                with np.load(path) as saved:
                    logits, ood_scores = torch.from_numpy(saved["logits"]), saved.get("ood")
                reused += 1
                return logits, ood_scores
            except (OSError, ValueError, KeyError):  # unreadable: scored again and overwritten below
                pass
        batches = rows_batches(cfg, data, rows, device, images=make_images())
        logits, ood_scores = ood.logits_and_scores(net, batches, device)
        arrays = {"logits": logits.numpy()} | ({} if ood_scores is None else {"ood": np.asarray(ood_scores)})
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return logits, ood_scores

    def score(make_images, **what) -> None:
        logits, ood_scores = scores(make_images, what["shift"], what["severity"])
        extra = {} if ood_scores is None else {"ood_flagged": float(ood.flagged(net.ood, ood_scores).mean())}
        pred = logits.argmax(1).numpy()
        counts = np.bincount(pred, minlength=len(CLASS_NAMES))
        sets = {}
        if calibration:
            probs = calibrate(logits, calibration["temperature"]).numpy()
            for alpha, threshold in calibration["conformal"]["thresholds"].items():
                covered = set_coverage(prediction_sets(probs, threshold), labels)
                sets |= {f"coverage_{alpha}": covered["coverage"], f"set_size_{alpha}": covered["mean_set_size"]}
        records.append(
            {
                **what,
                "n": len(rows),
                "accuracy": float((pred == labels).mean()),
                **dict(
                    zip(
                        ("accuracy_low", "accuracy_high"),
                        proportion_interval(pred == labels, seed=cfg.seed),
                        strict=True,
                    )
                ),
                "tumour_recall": float((pred[tumour] != NOTUMOR).mean()) if tumour.any() else None,
                # per class: a shift can take one class down while the mean barely moves
                **{
                    f"recall_{name}": float((pred[labels == i] == i).mean())
                    for i, name in enumerate(CLASS_NAMES)
                    if (labels == i).any()
                },
                **{f"pred_{name}": int(k) for name, k in zip(CLASS_NAMES, counts, strict=True)},
                **sets,
                **extra,
            }
        )

    score(lambda: clean, shift="clean", family="none", seen=None, severity=0, param="")
    pairs = [(shift, severity) for shift in SHIFTS.values() for severity in severities]
    # on a GPU the scoring takes seconds and the CPU transforms would leave it idle: a host thread
    # transforms the next pair's images while this pair is scored
    # (prefetch None: on CUDA only; on a CPU the thread would take cores from the scoring)
    if prefetch is None:
        prefetch = torch.device(device).type == "cuda"
    ahead = ThreadPoolExecutor(1, thread_name_prefix="shift") if prefetch else None
    pending = {}

    def transform_ahead(j: int) -> None:
        if ahead and j < len(pairs) and not stored(pairs[j][0].name, pairs[j][1]).exists():
            pending[j] = ahead.submit(pairs[j][0], clean, pairs[j][1])

    # the first pair too, so that the transforms run in that one thread, one pair at a time: each holds the
    # libraries' thread counts for its own pool (shifts.library_threads), and two at once would also share cores
    transform_ahead(0)
    for k, (shift, severity) in enumerate(progress(pairs, "shift suite", mininterval=10)):
        transform_ahead(k + 1)
        transformed = pending.pop(k, None)
        score(
            transformed.result if transformed else lambda: shift(clean, severity),  # noqa: B023 (called at once)
            shift=shift.name,
            family=shift.family,
            seen=shift.seen_in_training,
            severity=severity,
            param=str(shift.params[severity - 1]),
        )
    if ahead:
        ahead.shutdown()
    if reused:
        print(f"shift suite: {reused} of {len(records)} rows reused from {store} (same weights, pixels and code)")
    return pd.DataFrame(records)


@dataclass(frozen=True)
class ShiftSummary:
    """The shift suite in a few numbers: mean and worst accuracy over all shifts and severities
    and at the middle severity (2, or the only one scored), seen vs held-out families, the lowest
    tumour recall, the clean accuracy on the same images, and per conformal alpha the lowest set
    coverage and largest mean set size over the middle-severity shifts.

    Stored in metrics.json as flat keys (`as_dict`): `middle_min_coverage_0.01` and so on."""

    n_images: int
    severities: list[int]
    clean_accuracy: float
    mean_accuracy: float
    worst_accuracy: float
    middle_mean_accuracy: float
    middle_worst_accuracy: float
    middle_worst_shift: str
    middle_seen_accuracy: float
    middle_held_out_accuracy: float
    middle_min_tumour_recall: float
    middle_min_coverage: dict[str, float] = field(default_factory=dict)  # alpha -> lowest coverage
    middle_max_set_size: dict[str, float] = field(default_factory=dict)  # alpha -> largest mean set size
    # the lowest recall of any one class under any middle-severity shift, and which class and shift
    # (None in tables scored before per-class recall was recorded)
    middle_min_class_recall: float | None = None
    middle_min_class_recall_class: str | None = None
    middle_min_class_recall_shift: str | None = None

    @property
    def all_severities(self) -> bool:
        return list(self.severities) == list(SEVERITIES)

    def as_dict(self) -> dict:
        flat = {k: v for k, v in asdict(self).items() if k not in ("middle_min_coverage", "middle_max_set_size")}
        return (
            {f"middle_min_coverage_{a}": v for a, v in self.middle_min_coverage.items()}
            | {f"middle_max_set_size_{a}": v for a, v in self.middle_max_set_size.items()}
            | flat
        )

    @classmethod
    def from_dict(cls, values: dict) -> ShiftSummary:
        """From metrics.json's `shifts.summary` (the flat form `as_dict` writes)."""
        names = {f.name for f in fields(cls)} - {"middle_min_coverage", "middle_max_set_size"}
        by_prefix = {
            prefix: {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}
            for prefix in ("middle_min_coverage_", "middle_max_set_size_")
        }
        optional = {f.name for f in fields(cls) if f.default is None}
        return cls(
            **{k: values[k] for k in names if k in values or k not in optional},
            middle_min_coverage=by_prefix["middle_min_coverage_"],
            middle_max_set_size=by_prefix["middle_max_set_size_"],
        )


def summary_of(metrics: dict) -> ShiftSummary | None:
    """The shift summary of a metrics.json, None when the shift suite did not run."""
    values = (metrics.get("shifts") or {}).get("summary")
    return ShiftSummary.from_dict(values) if values else None


def shift_summary(table: pd.DataFrame) -> ShiftSummary:
    """The summary of a shift_table."""
    shifted = table[table["shift"] != "clean"]
    middle = shifted[shifted["severity"] == 2] if (shifted["severity"] == 2).any() else shifted
    worst = middle.loc[middle["accuracy"].idxmin()]
    alphas = [c.removeprefix("coverage_") for c in middle.columns if c.startswith("coverage_")]
    recalls = middle.set_index("shift")[[f"recall_{c}" for c in CLASS_NAMES if f"recall_{c}" in middle]].stack()
    lowest = recalls.idxmin() if len(recalls) else None  # (shift, "recall_<class>")
    return ShiftSummary(
        n_images=int(table["n"].iloc[0]),
        severities=sorted(int(s) for s in shifted["severity"].unique()),
        clean_accuracy=float(table.loc[table["shift"] == "clean", "accuracy"].iloc[0]),
        mean_accuracy=float(shifted["accuracy"].mean()),
        worst_accuracy=float(shifted["accuracy"].min()),
        middle_mean_accuracy=float(middle["accuracy"].mean()),
        middle_worst_accuracy=float(worst["accuracy"]),
        middle_worst_shift=str(worst["shift"]),
        middle_seen_accuracy=float(middle.loc[middle["seen"] == True, "accuracy"].mean()),  # noqa: E712
        middle_held_out_accuracy=float(middle.loc[middle["seen"] == False, "accuracy"].mean()),  # noqa: E712
        middle_min_tumour_recall=float(middle["tumour_recall"].min()),
        middle_min_coverage={a: float(middle[f"coverage_{a}"].min()) for a in alphas},
        middle_max_set_size={a: float(middle[f"set_size_{a}"].max()) for a in alphas},
        middle_min_class_recall=float(recalls.min()) if lowest else None,
        middle_min_class_recall_class=lowest[1].removeprefix("recall_") if lowest else None,
        middle_min_class_recall_shift=str(lowest[0]) if lowest else None,
    )


def parse_severities(text: str) -> tuple[int, ...]:
    """'1,2,3' -> (1, 2, 3); '' -> () (no shift suite)."""
    try:
        severities = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        severities = (0,)
    if not set(severities) <= set(SEVERITIES):
        raise SettingsError(f"shift severities take 1, 2 and/or 3 (comma-separated), not {text!r}")
    return severities


def shift_pivot(shifts: dict) -> pd.DataFrame:
    """Accuracy per shift (rows, by family) and severity (columns); the clean accuracy on the
    same images is in the summary."""
    table = pd.DataFrame(shifts["table"])
    table = table[table["shift"] != "clean"]
    pivot = table.pivot_table(index=["family", "shift"], columns="severity", values="accuracy", sort=False)
    pivot.columns = [f"severity {c}" for c in pivot.columns]
    return pivot
