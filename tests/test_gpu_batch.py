"""The maintainer's GPU batch (scripts/cuda_session.sh) runs on rented machines from which at most 8 files come
back; what would not come back is refused before anything runs."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_parts_whose_exports_would_not_all_come_back_are_refused_before_anything_runs(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", "scripts/cuda_session.sh", "robust", "top"],
        cwd=ROOT,
        env={**os.environ, "OUT": str(out), "PY": "false"},  # PY=false: no Python step could run
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "export 10 checkpoints" in result.stderr and "separate calls" in result.stderr
    assert not out.exists()


def test_taking_up_the_top_part_needs_the_run_that_stands_in_for_the_committed_default(tmp_path):
    import sys

    fetched = tmp_path / "fetched"
    fetched.mkdir()
    (fetched / "lite1-robust.pt").write_bytes(b"")  # a candidate, but nothing to choose against
    result = subprocess.run(
        [
            sys.executable,
            "scripts/after_top.py",
            str(fetched),
            "--compact-data",
            str(tmp_path),
            "--out",
            str(tmp_path / "top"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: no default-s42.pt in {fetched}: the choice is made against it"
    assert not (tmp_path / "top").exists()
