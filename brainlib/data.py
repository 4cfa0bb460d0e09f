"""Where the images come from, how one image is read, and the manifest that lists them all.

The manifest (one row per readable image) is the contract between notebooks: 01_data
writes it, every later step reads it. Splits live in it, so Testing can never leak into
model selection by accident.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from .atomic import atomic_path, write_text
from .config import CLASS_NAMES, SPLITS_ON_DISK, Config, in_repo, write_run_config
from .duplicates import AuditResult, audit_duplicates
from .errors import DataError
from .models import check_input_sides

KAGGLE_HANDLE = "masoudnickparvar/brain-tumor-mri-dataset"
EXPECTED_LAYOUT = "<data_dir>/Training/{glioma,meningioma,notumor,pituitary}/*.jpg and <data_dir>/Testing/{glioma,meningioma,notumor,pituitary}/*.jpg"
# Pixel limit: an 8000x8000 (64 MP) export is unusual but legal; anything above 100 MP is refused
# before decoding (a decompression bomb), skipped with a count like any unreadable file.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL's own guard stays as a backstop
# Larger sides are decoded reduced in the scan (JPEG DCT scaling): no image of the dataset has a
# side above 2048 px, so its manifest hashes are those of the full decode.
SCAN_MAX_SIDE = 2048


class ImageTooLarge(ValueError):
    pass


# Errors for files that are not (complete, sane) images.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# Where Kaggle mounts datasets a notebook "adds" (Kaggle's input panel): this one under its slug, a
# re-upload or another version under another name, sometimes a level or two deeper
KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_SLUG = KAGGLE_HANDLE.split("/")[1]


def attached_kaggle_dataset(root: Path = KAGGLE_INPUT, max_depth: int = 4) -> Path | None:
    """The folder under Kaggle's input mount that holds Training/ and Testing/: the one named by the
    dataset's slug first, else the first in sorted order at the shallowest depth; None when there is none."""
    if not root.is_dir():
        return None
    if (root / KAGGLE_SLUG / "Training").is_dir() and (root / KAGGLE_SLUG / "Testing").is_dir():
        return root / KAGGLE_SLUG
    for depth in range(max_depth):
        for training in sorted(root.glob("/".join(["*"] * depth + ["Training"]))):
            if training.is_dir() and (training.parent / "Testing").is_dir():
                return training.parent
    return None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Explicit argument, then $BRAIN_DATA_DIR, then the dataset attached to a Kaggle notebook,
    then a kagglehub download (needs internet; on Colab, Kaggle credentials)."""
    chosen = str(data_dir or os.environ.get("BRAIN_DATA_DIR", "")).strip()
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_dir():
            raise DataError(f"data folder {path} does not exist. Expected layout: {EXPECTED_LAYOUT}")
        return path
    attached = attached_kaggle_dataset()
    if attached is not None:
        return attached
    try:
        import kagglehub

        return Path(kagglehub.dataset_download(KAGGLE_HANDLE))
    except Exception as err:  # no internet, no credentials, package missing
        raise DataError(
            "No data found. Either set BRAIN_DATA_DIR (or the notebooks' data_dir parameter) to a "
            f"folder laid out as {EXPECTED_LAYOUT}, or give this machine internet access so that "
            f"kagglehub can download {KAGGLE_HANDLE!r}. kagglehub said: {type(err).__name__}: {err}"
        ) from err


def validate_layout(root: Path) -> dict[str, dict[str, list[Path]]]:
    """Check Training/ and Testing/ each hold exactly the four class folders, none empty.

    Returns {split: {class: [files]}}, hidden files left out. Raises DataError naming the path.
    """
    root = Path(root)
    found: dict[str, dict[str, list[Path]]] = {}
    for split in SPLITS_ON_DISK:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir} is missing. Expected layout: {EXPECTED_LAYOUT}")
        folders = {p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
        unknown = sorted(folders - set(CLASS_NAMES))
        missing = sorted(set(CLASS_NAMES) - folders)
        if unknown:
            raise DataError(f"{split_dir} has unknown class folder(s) {unknown}. Expected layout: {EXPECTED_LAYOUT}")
        if missing:
            raise DataError(f"{split_dir} lacks class folder(s) {missing}. Expected layout: {EXPECTED_LAYOUT}")
        found[split] = {}
        for name in CLASS_NAMES:
            files = sorted(p for p in (split_dir / name).iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise DataError(f"class folder {split_dir / name} is empty. Expected layout: {EXPECTED_LAYOUT}")
            found[split][name] = files
    return found


EXIF_ORIENTATION = 0x0112


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is shown: EXIF orientations 5-8 turn it by 90 degrees."""
    w, h = img.size
    return (h, w) if img.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8) else (w, h)


def _check_pixels(img: Image.Image) -> None:
    if img.width * img.height > MAX_PIXELS:
        raise ImageTooLarge(f"{img.width}x{img.height} px is above the {MAX_PIXELS // 1_000_000} MP limit")


def _decode(img: Image.Image, max_side: int | None = None) -> Image.Image:
    """Decode an opened image upright (EXIF orientation applied: a phone photo of a scan), JPEGs
    larger than max_side reduced in the DCT domain; refuses images above MAX_PIXELS."""
    _check_pixels(img)
    if max_side and img.format == "JPEG" and max(img.size) > max_side:
        img.draft(img.mode if img.mode in ("L", "RGB") else None, (max_side, max_side))
    img.load()
    img = ImageOps.exif_transpose(img)
    return img if img.mode != "P" else img.convert("RGBA")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image, whatever its name says (PNG-named .jpg files exist)."""
    with Image.open(path) as img:
        return _decode(img).copy()


def to_gray(img: Image.Image) -> Image.Image:
    """8-bit grayscale from any mode: RGB/RGBA/P via luma; 16-bit and float scaled by their max."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        peak = float(arr.max()) if arr.size else 0.0
        arr = arr * (255.0 / peak) if peak > 0 else arr
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "LA" or img.mode == "RGBA":
        img = img.convert("RGB")  # MRIs carry no meaningful alpha
    return img.convert("L")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode (the plain reference pipeline feeds RGB)."""
    return to_gray(img).convert("RGB") if img.mode.startswith(("I", "F")) else img.convert("RGB")


def read_gray(path: str | os.PathLike, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode once, to a size x size uint8 grayscale array, and the original (width, height):
    the single preprocessing every path (cache, evaluation, predict) shares. Aspect ratio is not
    kept, as in the reference's Resize((224, 224))."""
    with Image.open(path) as img:
        original = upright_size(img)
        _check_pixels(img)
        if img.format == "JPEG":
            img.draft("L", (size, size))  # DCT-domain downscale: large JPEGs decode fast
        gray = to_gray(_decode(img))
    return np.array(gray.resize((size, size), Image.BILINEAR), dtype=np.uint8), original


def load_gray(path: str | os.PathLike, size: int) -> np.ndarray:
    return read_gray(path, size)[0]


@dataclass
class ImageFacts:
    width: int
    height: int
    mode: str
    format: str
    is_gray: bool  # all channels (nearly) equal: colour carries no information
    file_sha256: str
    pixel_sha1: str  # same decoded pixels => same hash, whatever the file bytes
    gray_small: np.ndarray = field(repr=False)  # 17x16 thumbnail for the perceptual hash


def inspect_image(path: Path) -> ImageFacts:
    """Everything the manifest and the duplicate audit need from one file, in one decode."""
    raw = Path(path).read_bytes()
    with Image.open(path) as img:
        fmt, mode, (width, height) = img.format or "?", img.mode, upright_size(img)
        img = _decode(img, SCAN_MAX_SIDE)
        rgb = np.asarray(to_rgb(img), dtype=np.uint8)
        gray = to_gray(img)
    spread = int(np.abs(rgb.astype(np.int16) - rgb[..., :1]).max()) if rgb.size else 0
    small = np.asarray(gray.resize((17, 16), Image.BILINEAR), dtype=np.uint8)
    return ImageFacts(
        width=width,
        height=height,
        mode=mode,
        format=fmt,
        is_gray=spread <= 8,
        file_sha256=hashlib.sha256(raw).hexdigest(),
        pixel_sha1=hashlib.sha1(np.ascontiguousarray(rgb).tobytes() + str(rgb.shape).encode()).hexdigest(),
        gray_small=small,
    )


@dataclass
class Scan:
    manifest: pd.DataFrame
    skipped: list[tuple[str, str]]  # (path, reason)
    thumbs: np.ndarray  # N x 16 x 17 uint8, row-aligned with manifest


def scan_dataset(root: Path, fast_per_class: int = 0, progress: bool = True) -> Scan:
    """Validate the layout and read every file once. Unreadable files are skipped with a warning.

    fast_per_class > 0 keeps only the first n files of each class folder (smoke runs, tests).
    """
    from tqdm.auto import tqdm

    layout = validate_layout(root)
    todo = [
        (split, name, path)
        for split, classes in layout.items()
        for name, files in classes.items()
        for path in (files[:fast_per_class] if fast_per_class else files)
    ]

    def inspect_or_error(item):
        try:
            return inspect_image(item[2])
        except IMAGE_ERRORS as err:
            return err

    rows, thumbs, skipped = [], [], []
    # threads: PIL decodes and hashlib hashes without the GIL (23 s -> 15 s on 2 cores); map keeps the order
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(
            tqdm(pool.map(inspect_or_error, todo), total=len(todo), desc="scan", disable=not progress, mininterval=2)
        )
    for (split, name, path), facts in zip(todo, results):
        if isinstance(facts, Exception):
            err = facts
            reason = f"{type(err).__name__}: {err}"
            warnings.warn(f"skipping unreadable image {path}: {reason}", stacklevel=2)
            skipped.append((str(path), reason))
            continue
        rows.append(
            {
                "path": path.relative_to(root).as_posix(),
                "split_on_disk": split,
                "label": name,
                "label_idx": CLASS_NAMES.index(name),
                "width": facts.width,
                "height": facts.height,
                "mode": facts.mode,
                "format": facts.format,
                "is_gray": facts.is_gray,
                "file_sha256": facts.file_sha256,
                "pixel_sha1": facts.pixel_sha1,
            }
        )
        thumbs.append(facts.gray_small)
    for split in SPLITS_ON_DISK:
        for name in CLASS_NAMES:
            if not any(r["split_on_disk"] == split and r["label"] == name for r in rows):
                raise DataError(f"no readable image in {Path(root) / split / name}; every file there was skipped")
    manifest = pd.DataFrame(rows)
    return Scan(manifest, skipped, np.stack(thumbs) if thumbs else np.zeros((0, 16, 17), np.uint8))


def assign_splits(
    manifest: pd.DataFrame, val_fraction: float, seed: int, group_column: str = "near_group"
) -> pd.DataFrame:
    """Add `split` (train/val/test): val is a seeded, stratified share of Training only.

    Duplicate groups stay on one side, so a validation image never has a twin in train
    (that would flatter model selection exactly the way the Testing leak flatters the test).
    """
    out = manifest.copy()
    out["split"] = np.where(out["split_on_disk"] == "Testing", "test", "train")
    training = out[out["split_on_disk"] == "Training"]
    groups = training[group_column] if group_column in training else pd.Series(training.index, index=training.index)
    rng = np.random.default_rng(seed)
    for _, rows in training.groupby("label", sort=True):
        group_ids = np.array(sorted(groups.loc[rows.index].unique()))
        rng.shuffle(group_ids)
        target = max(1, round(val_fraction * len(rows))) if val_fraction > 0 else 0
        sizes = groups.loc[rows.index].value_counts()
        taken, chosen = 0, []
        for gid in group_ids:
            if taken >= target:
                break
            chosen.append(gid)
            taken += int(sizes[gid])
        out.loc[rows.index[groups.loc[rows.index].isin(chosen)], "split"] = "val"
    return out


def split_digest(manifest: pd.DataFrame, split: str = "val") -> str:
    """Which images (path and label) form a split, as a short digest: equal for two runs selected on
    the same validation carve, different for the same seed on another copy of the data (the compact
    WebP copy's duplicate groups differ, and with them 70 % of the carve)."""
    rows = manifest.loc[manifest["split"] == split, ["path", "label"]].sort_values("path")
    return hashlib.sha256("\n".join(rows["path"] + "\t" + rows["label"]).encode()).hexdigest()[:16]


def leakage_free(frame: pd.DataFrame) -> np.ndarray:
    """Boolean per test row: neither an exact nor a near twin in Training (01's duplicate audit):
    the images a model cannot answer from memory."""
    return ~(frame["has_train_twin_exact"].astype(bool) | frame["has_train_twin_near"].astype(bool)).to_numpy()


def write_manifest(manifest: pd.DataFrame, run_dir: str | Path) -> Path:
    path = Path(run_dir) / "manifest.csv"
    with atomic_path(path) as tmp:
        manifest.to_csv(tmp, index=False)
    return path


def read_manifest(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "manifest.csv"
    if not path.exists():
        raise DataError(f"{path} not found: run notebooks/01_data.ipynb (or `make pipeline`) for this run first")
    return pd.read_csv(path)


def class_counts(manifest: pd.DataFrame, column: str = "split") -> pd.DataFrame:
    """Images per class (rows) and split (columns), with totals."""
    table = pd.crosstab(manifest["label"], manifest[column], margins=True, margins_name="total")
    return table.reindex(list(CLASS_NAMES) + ["total"])


def build_manifest(
    data_root: Path,
    val_fraction: float,
    seed: int,
    fast_per_class: int = 0,
    progress: bool = True,
    exclude_list: str = "",
    carve_file: str = "",
):
    """Scan, audit duplicates, assign splits: the manifest 01_data writes. Returns (manifest, audit, scan).
    With a carve file, its images are the validation carve instead of one drawn with `seed`. With an
    exclude list, its Training images get split `excluded` (in neither train nor val) after the split
    is drawn, so train/val/test are otherwise those of the same seed without it."""
    scan = scan_dataset(data_root, fast_per_class, progress)
    audit = audit_duplicates(scan.manifest, scan.thumbs)
    manifest = (
        carve_from_file(audit.manifest, carve_file) if carve_file else assign_splits(audit.manifest, val_fraction, seed)
    )
    return exclude_images(manifest, exclude_list) if exclude_list else manifest, audit, scan


def carve_from_file(manifest: pd.DataFrame, carve_file: str | Path) -> pd.DataFrame:
    """Add `split` as assign_splits does, with the validation images those the CSV's `path` column lists
    (and its `label` column, where there is one, must agree): the carve another run was selected on,
    kept by path across copies of the data (the compact WebP copy keeps every path). Listed paths that
    are not Training images here are an error. Duplicate groups are this copy's: validation images whose
    near twins on this copy would train are counted in one line, since the carve was drawn on another."""
    path = in_repo(carve_file)  # a file of the repo, as scripts/default_carve.csv, from any folder
    listed = _read_image_list(path, "carve file")
    training = manifest["split_on_disk"] == "Training"
    labels = manifest.loc[training].set_index("path")["label"]
    unknown = sorted(set(listed["path"]) - set(labels.index))
    if unknown:
        raise DataError(
            f"carve file {path} names {len(unknown)} images that are not Training images of this dataset, "
            f"e.g. {unknown[0]}"
        )
    if "label" in listed:
        wrong = listed[labels.loc[listed["path"]].to_numpy() != listed["label"].to_numpy()]
        if len(wrong):
            raise DataError(
                f"carve file {path} gives {len(wrong)} images another label than their class folder, "
                f"e.g. {wrong['path'].iloc[0]}"
            )
    out = manifest.copy()
    held_out = out["path"].isin(listed["path"])
    out["split"] = np.where(out["split_on_disk"] == "Testing", "test", np.where(held_out, "val", "train"))
    if "near_group" in out:
        trained_groups = set(out.loc[out["split"] == "train", "near_group"])
        straddling = int((held_out & out["near_group"].isin(trained_groups)).sum())
        if straddling:
            print(
                f"carve file {path}: {straddling} of its {int(held_out.sum())} validation images have a near twin "
                "that trains on this copy of the data",
                file=sys.stderr,
            )
    return out


def _read_image_list(path: Path, what: str) -> pd.DataFrame:
    """A CSV of images named by a `path` column (a carve file, an exclude list); `what` names it in the
    one-line errors."""
    if not path.is_file():
        raise DataError(f"{what} {path} not found")
    listed = pd.read_csv(path)
    if "path" not in listed:
        raise DataError(f"{what} {path} has no 'path' column")
    return listed


def exclude_images(manifest: pd.DataFrame, exclude_list: str | Path) -> pd.DataFrame:
    """Training images listed in the CSV's `path` column move to split `excluded`; Testing images
    are never removed (the official test split is not edited), and listed paths not in the
    manifest are an error."""
    path = Path(exclude_list)
    listed = _read_image_list(path, "exclude list")
    unknown = set(listed["path"]) - set(manifest["path"])
    if unknown:
        raise DataError(
            f"exclude list {path} names {len(unknown)} images not in this dataset, e.g. {sorted(unknown)[0]}"
        )
    out = manifest.copy()
    hit = out["path"].isin(listed["path"]) & (out["split_on_disk"] == "Training")
    out.loc[hit, "split"] = "excluded"
    return out


@dataclass
class Prepared:
    """What preparing a run found: the manifest, the duplicate audit and the scan (with skipped files)."""

    manifest: pd.DataFrame
    duplicates: AuditResult
    scan: Scan
    root: Path


def prepare_run(cfg: Config, progress: bool = True) -> Prepared:
    """Prepare a run folder, the same way from the CLI (`prepare`) and from 01_data: scan the data,
    audit duplicates, carve validation from Training, and write the run's files: manifest.csv,
    audit.json (the duplicate audit's summary) and config.json (the run's settings, fixed here)."""
    check_input_sides(cfg.model, cfg.image_size, cfg.scoring_size)
    root = resolve_data_dir(cfg.data_dir or None)
    manifest, dup, scan = build_manifest(
        root,
        cfg.val_fraction,
        cfg.validation_seed,
        cfg.fast_per_class if cfg.fast else 0,
        progress=progress,
        exclude_list=cfg.exclude_list,
        carve_file=cfg.carve_file,
    )
    trained_on = manifest[manifest["split"] == "train"]["label"].value_counts()
    untrained = [name for name in CLASS_NAMES if not trained_on.get(name)]
    if untrained:  # the carve takes at least one group per class, so a tiny sample can leave none to train on
        raise DataError(
            f"the validation carve leaves no Training image of {', '.join(untrained)} to train on: "
            "use more images per class (fast_per_class) or a smaller val_fraction"
        )
    write_manifest(manifest, cfg.run_dir)
    write_text(Path(cfg.run_dir) / "audit.json", json.dumps(dup.summary, indent=2) + "\n")
    write_run_config(cfg)
    return Prepared(manifest, dup, scan, root)
