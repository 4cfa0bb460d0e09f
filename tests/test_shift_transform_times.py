"""scripts/shift_transform_times.py: every pair of the suite timed once, the totals adding up."""

import json
import sys

from brainlib.shifts import SHIFTS


def test_every_shift_is_timed_at_each_severity_asked_and_the_totals_add_up(prepared_run, script, tmp_path, monkeypatch):
    out = tmp_path / "times.json"
    argv = ["shift_transform_times.py", "--run-dir", prepared_run.run_dir, "--severities", "1,3", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    script("shift_transform_times").main()
    times = json.loads(out.read_text())
    assert set(times["by_pair_s"]) == {f"{name}/{s}" for name in SHIFTS for s in (1, 3)}
    assert set(times["by_shift_s"]) == set(SHIFTS) and times["images"] > 0
    assert abs(sum(times["by_pair_s"].values()) - times["total_s"]) < 0.01
    assert abs(sum(times["by_shift_s"].values()) - times["total_s"]) < 0.05
