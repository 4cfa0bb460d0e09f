"""DICOM and NIfTI inputs: windowing, MONOCHROME1, multi-frame, compressed pixel data, canonical
orientation and slicing, on small files the tests write themselves; and predict reading them."""

import json

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from brainlib import medical
from brainlib.cli import main
from brainlib.errors import DataError


def write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None):
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = len(pixels)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_rescale_and_window_are_applied(tmp_path):
    stored = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (100, 1))  # 0..990 along each row
    # real values = 2 * stored - 100: -100..1880; a window centred at 500, width 400 shows 300..700
    path = write_dicom(tmp_path / "w.dcm", stored, slope=2.0, intercept=-100.0, window=(500, 400))
    ((label, image),) = medical.read_dicom(path)
    real = 2.0 * stored - 100.0
    assert label == "" and image.dtype == np.uint8 and image.shape == stored.shape
    assert (image[real <= 300] == 0).all() and (image[real >= 700] == 255).all()
    inside = (real > 320) & (real < 680)
    assert np.all(np.diff(image[0][inside[0]].astype(int)) >= 0) and 0 < image[inside].min() < image[inside].max() < 255


def test_monochrome1_is_inverted_and_frames_become_slices(tmp_path):
    frames = np.stack([np.full((16, 16), v, np.uint16) for v in (0, 500, 1000)])
    frames[:, :, :8] = 0  # left half dark in every frame
    normal = medical.read_dicom(write_dicom(tmp_path / "m2.dcm", frames))
    inverted = medical.read_dicom(write_dicom(tmp_path / "m1.dcm", frames, photometric="MONOCHROME1"))
    assert [label for label, _ in normal] == ["frame 0", "frame 1", "frame 2"]
    for (_, a), (_, b) in zip(normal, inverted, strict=True):
        assert np.array_equal(b, 255 - a)
    assert normal[2][1][0, 15] > normal[2][1][0, 0]  # bright right half stays bright in MONOCHROME2


def test_compressed_dicom_names_the_decoder_to_install(tmp_path):
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")  # shipped with pydicom; JPEG-LS needs a decoder
    with pytest.raises(DataError, match="JPEG-LS .*: pip install pylibjpeg pylibjpeg-libjpeg"):
        medical.read_dicom(path)
    (tmp_path / "x.dcm").write_text("not dicom")
    with pytest.raises(DataError, match="not a readable DICOM file"):
        medical.read_dicom(tmp_path / "x.dcm")


def test_nifti_is_reoriented_to_canonical_and_sliced_along_the_axis(tmp_path):
    volume = np.zeros((8, 10, 6), np.float32)
    volume[1, 2, 3] = 100.0  # one bright voxel
    flipped = np.diag([-1.0, -1.0, 1.0, 1.0])  # stored LPS: canonical RAS flips the first two axes
    nib.save(nib.Nifti1Image(volume, flipped), tmp_path / "v.nii.gz")
    slices = medical.read_nifti(tmp_path / "v.nii.gz", axis=2)
    assert [label for label, _ in slices] == [f"slice {i}" for i in range(6)]
    bright = [i for i, (_, s) in enumerate(slices) if s.max() == 255]
    assert bright == [3]
    canonical = np.flip(np.flip(volume, 0), 1)  # what RAS+ makes of it
    expected = np.rot90(canonical[:, :, 3])
    assert np.unravel_index(slices[3][1].argmax(), slices[3][1].shape) == np.unravel_index(
        expected.argmax(), expected.shape
    )
    ((_, one),) = medical.read_nifti(tmp_path / "v.nii.gz", axis=0, index=6)
    assert one.shape == (6, 10)  # a sagittal slice: (z, y) after the rotation
    with pytest.raises(DataError, match="outside the volume's 8 slices"):
        medical.read_nifti(tmp_path / "v.nii.gz", axis=0, index=8)


def test_dicom_files_without_a_dicom_name_are_found_by_their_header(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    rng = np.random.default_rng(0)
    # as scanners and PACS exports name them: no suffix, or a UID whose last part looks like one
    for name in ("IM000002", "1.2.840.113619.2.55.3.1"):
        write_dicom(series / name, rng.integers(0, 4000, (32, 32)).astype(np.uint16))
    (series / "README").write_bytes(b"x" * 128 + b"DICX")  # the preamble's size, not its marker
    assert medical.is_dicom(series / "IM000002") and not medical.is_dicom(series / "README")
    assert not medical.is_dicom(tmp_path / "missing")
    found = medical.dicom_series(sorted(series.iterdir()))
    assert sorted(f.name for f in found) == ["1.2.840.113619.2.55.3.1", "IM000002"]
    assert medical.is_medical(found[0]) and medical.read_dicom(found[0])[0][1].shape == (32, 32)


def test_predict_reads_a_dicom_series_and_a_nifti_volume(trained_run, tmp_path, capsys):
    series = tmp_path / "series"
    series.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        # the last without a suffix: found by its header
        write_dicom(series / (f"im{k}.dcm" if k < 2 else f"im{k}"), rng.integers(0, 4000, (64, 64)).astype(np.uint16))
    nib.save(nib.Nifti1Image(rng.random((32, 32, 4)).astype(np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    ckpt = f"{trained_run.run_dir}/checkpoints/best.pt"
    rc = main(["predict", str(series), str(tmp_path / "vol.nii.gz"), "--checkpoint", ckpt, "--json", "--allow-ood"])
    report = json.loads(capsys.readouterr().out)
    results = report["results"]
    assert [r["path"].split("/")[-1] for r in results] == ["im0.dcm", "im1.dcm", "im2"] + ["vol.nii.gz"] * 4
    assert all(r["class"] is not None and "ood_score" in r for r in results)
    assert report["volumes"] == [
        {
            "path": str(tmp_path / "vol.nii.gz"),
            "slices": 4,
            "classes": report["volumes"][0]["classes"],
            "out_of_distribution": report["volumes"][0]["out_of_distribution"],
        }
    ]
    assert sum(report["volumes"][0]["classes"].values()) == 4
    assert rc == 0  # --allow-ood: every slice answered, flagged ones marked
