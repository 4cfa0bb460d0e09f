"""Checks on the real dataset; skipped where it is not on this machine."""

import os
from pathlib import Path

import pytest

from brainlib import data

REAL = Path(
    os.environ.get("BRAIN_REAL_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared/data/brain-tumor-mri-dataset"
)
pytestmark = pytest.mark.skipif(not (REAL / "Training").is_dir(), reason=f"real dataset not at {REAL}")

EXPECTED = {
    "Training": {"glioma": 1321, "meningioma": 1339, "notumor": 1595, "pituitary": 1457},
    "Testing": {"glioma": 300, "meningioma": 306, "notumor": 405, "pituitary": 300},
}


def test_real_counts_and_every_file_decodes():
    layout = data.validate_layout(REAL)
    assert {s: {c: len(f) for c, f in classes.items()} for s, classes in layout.items()} == EXPECTED
    assert sum(len(f) for f in layout["Training"].values()) == 5712
    assert sum(len(f) for f in layout["Testing"].values()) == 1311
    scan = data.scan_dataset(REAL, progress=False)
    assert scan.skipped == [] and len(scan.manifest) == 7023
    assert set(scan.manifest["mode"]) == {"RGB", "L", "RGBA", "P"}
    assert (scan.manifest["format"] == "PNG").sum() == 5
