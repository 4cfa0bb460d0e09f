"""The files MRI users have: DICOM (pydicom) and NIfTI (nibabel), turned into the 8-bit grayscale
slices the model reads.

DICOM: the stored values go through the modality LUT (rescale slope and intercept) and the VOI LUT
(the window the file names, else the slice's own 0.5-99.5 % range); MONOCHROME1 is inverted so that
bright means high signal; a multi-frame file gives one slice per frame. A folder of .dcm files is a
series: each file is scored, sorted by InstanceNumber.

NIfTI: the volume is reoriented to the closest canonical (RAS+) orientation, and slices are taken along
one axis (2: axial, the dataset's commonest view; 1: coronal; 0: sagittal), every one or the one
asked for, each rotated so that anterior (or superior) is up and scaled by the volume's 0.5-99.5 % range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
PERCENTILES = (0.5, 99.5)
# transfer syntaxes whose pixel data need a decoder pydicom does not bundle, and the package that adds it
DECODERS = {
    "JPEG 2000": "pylibjpeg pylibjpeg-openjpeg",
    "JPEG-LS": "pylibjpeg pylibjpeg-libjpeg",
    "JPEG Lossless": "pylibjpeg pylibjpeg-libjpeg",
    "JPEG Extended": "pylibjpeg pylibjpeg-libjpeg",
    "RLE": "pylibjpeg pylibjpeg-rle",
    "High-Throughput JPEG 2000": "pylibjpeg pylibjpeg-openjpeg",
}


def is_dicom(path: str | Path) -> bool:
    """A .dcm/.dicom name, or a DICOM Part 10 file under any name: scanners and PACS exports often write
    series as IM000001 or as UIDs (`1.2.840....320`), recognised by "DICM" after the 128-byte preamble."""
    if str(path).lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:  # missing or unreadable: reported when it is read
        return False


def is_medical(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES) or is_dicom(path)


def to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Linear map of [low, high] (default: the 0.5-99.5 % range) to 0-255, clipped."""
    values = np.asarray(values, np.float64)
    if low is None or high is None:
        low, high = np.percentile(values, PERCENTILES)
    if high <= low:  # a nearly constant image: its whole range instead
        low, high = float(values.min()), float(values.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.rint((values - low) * scale), 0, 255).astype(np.uint8)


def _decoder_hint(ds) -> str:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    uid_name = getattr(syntax, "name", str(syntax or ""))
    for key, packages in DECODERS.items():
        if key.lower() in uid_name.lower():
            return f"its pixel data are compressed as {uid_name}: pip install {packages} to read it"
    return f"its pixel data ({uid_name or 'unknown transfer syntax'}) cannot be decoded here"


def read_dicom(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """[(label, uint8 slice)] of a DICOM file: one per frame."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as err:
        raise DataError(f"not a readable DICOM file ({type(err).__name__}: {err})") from None
    if "PixelData" not in ds:
        raise DataError("a DICOM file without pixel data (a report or a structure set, not an image)")
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError):  # no decoder, or a broken header
        raise DataError(_decoder_hint(ds)) from None
    if ds.get("SamplesPerPixel", 1) > 1:  # colour (ultrasound, secondary capture): luma
        pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
    frames = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[None]
    slices = []
    for k, frame in enumerate(frames):
        values = apply_modality_lut(frame, ds)
        windowed = "WindowCenter" in ds or "VOILUTSequence" in ds
        if windowed:
            values = apply_voi_lut(values, ds, prefer_lut=True)
        image = to_uint8(values, float(np.min(values)), float(np.max(values))) if windowed else to_uint8(values)
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            image = 255 - image
        slices.append((f"frame {k}" if len(frames) > 1 else "", image))
    return slices


def dicom_series(files: list[Path]) -> list[Path]:
    """The DICOM files among `files` (a folder's, any name, see is_dicom), in InstanceNumber order (file name
    where it is missing)."""
    import pydicom

    files = [f for f in files if is_dicom(f)]

    def order(f: Path):
        try:
            return (0, int(pydicom.dcmread(f, stop_before_pixels=True).get("InstanceNumber", 0) or 0), f.name)
        except Exception:  # unreadable: reported when it is read
            return (1, 0, f.name)

    return sorted(files, key=order)


def read_nifti(path: str | Path, axis: int = 2, index: int | None = None) -> list[tuple[str, np.ndarray]]:
    """[(label, uint8 slice)] of a NIfTI volume along `axis` of its canonical orientation: every slice,
    or the one at `index`."""
    import nibabel as nib

    try:
        volume = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(volume.get_fdata(dtype=np.float32))
    except Exception as err:  # nibabel raises many kinds for a damaged or foreign file
        raise DataError(f"not a readable NIfTI volume ({type(err).__name__}: {err})") from None
    if data.ndim == 4:
        data = data[..., 0]  # the first volume of a time series
    if data.ndim != 3:
        raise DataError(f"a NIfTI volume of {data.ndim} dimensions; expected 3")
    if axis not in (0, 1, 2):
        raise DataError(f"slice axis must be 0, 1 or 2, not {axis}")
    count = data.shape[axis]
    picks = range(count) if index is None else [index]
    if index is not None and not 0 <= index < count:
        raise DataError(f"slice {index} is outside the volume's {count} slices along axis {axis}")
    low, high = np.percentile(data, PERCENTILES)
    if high <= low:
        low, high = float(data.min()), float(data.max())
    return [(f"slice {i}", np.rot90(to_uint8(np.take(data, i, axis=axis), low, high))) for i in picks]


def resized(image: np.ndarray, size: int) -> np.ndarray:
    """The same square resize as data.read_gray."""
    return np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)
