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


def test_taking_up_the_top_part_needs_an_export_to_choose_from(tmp_path):
    import sys

    fetched = tmp_path / "fetched"
    fetched.mkdir()
    (fetched / "results.tgz").write_bytes(b"")  # the batch's logs, but no checkpoint came back
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
    assert result.stderr.strip().startswith("error: none of the plan's exports (default-s42, ")
    assert result.stderr.strip().endswith(f"in {fetched}: nothing to choose")
    assert not (tmp_path / "top").exists()


def test_the_committed_default_is_the_incumbent_where_the_exports_were_selected_on_its_carve(script, monkeypatch):
    import pytest

    after_top = script("after_top")
    digests = {"default.pt": "carve-a", "default-s42.pt": "carve-a", "lite1-robust.pt": "carve-a"}
    monkeypatch.setattr(after_top, "load_checkpoint", lambda path: {"val_digest": digests[Path(path).name]})
    found = {"default-s42": Path("default-s42.pt"), "lite1-robust": Path("lite1-robust.pt")}
    checkpoints, incumbent = after_top.with_incumbent(found, Path("default.pt"))
    assert incumbent == "committed" and list(checkpoints) == ["committed", "default-s42", "lite1-robust"]

    digests |= {"default-s42.pt": "carve-b", "lite1-robust.pt": "carve-b"}  # a smoke run's own carve
    checkpoints, incumbent = after_top.with_incumbent(found, Path("default.pt"))
    assert incumbent == after_top.FIRST_RUN == "default-s42" and checkpoints == found
    with pytest.raises(SystemExit, match="no default-s42.pt came back to stand in"):
        after_top.with_incumbent({"lite1-robust": Path("lite1-robust.pt")}, Path("default.pt"))


FAKE_PYTHON = r"""#!/bin/bash
# stands in for python: records each brainlib command and leaves the files the next step reads
# (not the machine report's `python -c` probes, nor `-m pip` where a checkout holds the wheels in .gpu/)
[ "$1" = -m ] && [ "$2" = brainlib ] || exit 0
shift 2
echo "$*" >>"$CALLS"
run=
for ((i = 1; i <= $#; i++)); do [ "${!i}" = --run-dir ] && j=$((i + 1)) && run=${!j}; done
case $1 in
prepare) mkdir -p "$run" ;;
train) [ "${run##*/}" = "$FAIL_TRAINING" ] && exit 1; mkdir -p "$run/checkpoints" && touch "$run/checkpoints/best.pt" ;;
evaluate) touch "$run/metrics.json" ;;
export) cp "$2" "$3" ;;
esac
"""


def run_top_part(tmp_path, deadline_s: int, fail_training: str = ""):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    env = {**os.environ, "OUT": str(out), "PY": str(fake), "CALLS": str(calls), "DEADLINE_S": str(deadline_s)}
    env["FAIL_TRAINING"] = fail_training
    env |= {"RUNS": str(tmp_path / "runs"), "BRAIN_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        ["bash", "scripts/cuda_session.sh", "top"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return out, calls.read_text().splitlines() if calls.exists() else [], result.stdout


def test_the_top_part_runs_the_plan_that_after_top_takes_up(tmp_path, script):
    after_top = script("after_top")
    from brainlib.config import RECIPES

    out, calls, _ = run_top_part(tmp_path, deadline_s=10_000)
    runs = tmp_path / "runs"
    plan = {step[1]: step for step in after_top.top_plan_steps()}
    trained = [c.split()[2] for c in calls if c.startswith("train ")]
    assert [Path(t).name for t in trained] == list(after_top.EXPORTS)
    for name in after_top.EXPORTS:  # each with its recipe and seed, on the shared carve, exported for the CPU
        recipe, seed = plan[name][2:4]
        assert recipe in RECIPES
        prepare = f"prepare --run-dir {runs / name} --recipe {recipe} --seed {seed} --split-seed 42"
        assert f"{prepare} --carve-file scripts/default_carve.csv" in calls  # the committed default's carve
        assert (out / f"{name}.pt").exists()
    assert len(after_top.EXPORTS) <= 6  # what comes back beside results.tgz and steps.tsv
    ensembles = [c.split() for c in calls if c.startswith("ensemble ")]
    assert [e[e.index("--out") + 1] for e in ensembles] == [
        str(runs / "ensembles" / f"{n}.pt") for n in after_top.ENSEMBLES
    ]
    for call, (members, flip) in zip(ensembles, after_top.ENSEMBLES.values()):
        assert call[1 : 1 + len(members)] == [str(runs / m / "checkpoints" / "best.pt") for m in members]
        assert ("--flip" in call) == flip
        assert call[call.index("--run-dir") + 1] == str(runs / after_top.FIRST_RUN)
    assert not [c for c in calls if c.startswith(("evaluate", "compare"))]  # scored on the original files, on a CPU


def test_a_run_that_does_not_train_leaves_out_the_ensembles_it_belongs_to(tmp_path, script):
    after_top = script("after_top")
    failed = next(m for members, _ in after_top.ENSEMBLES.values() for m in members if m != after_top.FIRST_RUN)
    out, calls, printed = run_top_part(tmp_path, deadline_s=10_000, fail_training=failed)
    trained = [name for name in after_top.EXPORTS if name != failed]
    assert sorted(p.name for p in out.glob("*.pt")) == sorted(f"{name}.pt" for name in trained)
    built = [c.split()[c.split().index("--out") + 1] for c in calls if c.startswith("ensemble ")]
    for name, (members, _) in after_top.ENSEMBLES.items():
        complete = set(members) <= set(trained)
        assert (str(tmp_path / "runs" / "ensembles" / f"{name}.pt") in built) == complete
        assert (f"ensemble-{name}\tskipped\t(not every member trained" in printed) == (not complete)
    assert f"{failed}-train\trc=1" in printed


def test_steps_that_would_pass_the_deadline_are_skipped_and_listed(tmp_path, script):
    after_top = script("after_top")
    out, calls, printed = run_top_part(tmp_path, deadline_s=5)  # shorter than any step's budget
    assert calls == [] and not list(out.glob("*.pt"))
    for name in after_top.EXPORTS:
        assert f"{name}\tskipped\t(" in printed


def test_the_suite_part_on_a_machine_without_its_wheels_says_so_and_scores_nothing(tmp_path):
    """The suite's wheels come in the call before (suite-install): a fresh machine has none, and the part
    stops with a line that says which part to run first, instead of failing on an import."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PY": str(fake), "CALLS": str(calls), "TMPDIR": str(tmp_path)}
    env |= {"RUNS": str(tmp_path / "runs"), "SUITE_SITE": str(tmp_path / "no-site")}
    result = subprocess.run(
        ["bash", "scripts/cuda_session.sh", "suite"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "suite\tskipped\t(no wheels in" in result.stdout and "run the suite-install part" in result.stdout
    assert not calls.exists(), "no brainlib command ran"
