"""The command line: every expected error is one `error: ...` line with its own exit code; only
`prepare` writes a run's settings, which later steps keep."""

import dataclasses
import json
import re
import shutil

import pytest

from brainlib.cli import COMMAND_SETTINGS, main
from brainlib.config import Config, read_run_config


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda root: shutil.rmtree(root), "does not exist"),
        (lambda root: shutil.rmtree(root / "Testing"), "Testing is missing"),
        (lambda root: (root / "Training" / "astrocytoma").mkdir(), "unknown class folder"),
        (lambda root: shutil.rmtree(root / "Training" / "pituitary"), "lacks class folder"),
        (lambda root: [p.unlink() for p in (root / "Testing" / "glioma").iterdir()], "is empty"),
        (lambda root: [p.write_text("junk") for p in (root / "Testing" / "glioma").iterdir()], "no readable image"),
    ],
    ids=["missing folder", "missing split", "unknown class", "missing class", "empty class", "all unreadable"],
)
def test_prepare_data_errors_are_one_line_with_exit_code_3(data_copy, tmp_path, capsys, breakage, message):
    breakage(data_copy)
    rc = main(["prepare", "--run-dir", str(tmp_path / "run"), "--data-dir", str(data_copy), "--fast", "true"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 3
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err


def test_train_without_a_prepared_run_is_one_line(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "nothing"), "--epochs", "1"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "manifest.csv not found" in err and "\n" not in err


def test_evaluate_with_a_missing_checkpoint_is_one_line(tmp_path, fixture_root, capsys):
    rc = main(
        [
            "evaluate",
            "--checkpoint",
            str(tmp_path / "nope.pt"),
            "--run-dir",
            str(tmp_path / "e"),
            "--data-dir",
            str(fixture_root),
        ]
    )
    assert rc == 4 and capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--recipe", "reference", "--image-size", "256"], "seed_cnn takes 224-px input only"),
        (["--recipe", "reference", "--test-image-size", "272"], "not 272 px"),
        (["--model", "resnet50"], "unknown model 'resnet50'"),
    ],
    ids=["seed_cnn trained at 256", "seed_cnn scored at 272", "unknown model"],
)
def test_prepare_refuses_a_model_it_cannot_run_before_anything_is_written(tmp_path, capsys, flags, message):
    """Before, a 256-px seed_cnn run was prepared and then failed with a shape error at its first batch
    (one scored at 272 px only after its last epoch)."""
    rc = main(["prepare", "--run-dir", str(tmp_path / "run"), "--fast", "true", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "run" / "config.json").exists()


def test_bench_with_no_steps_to_time_is_one_line(tmp_path, capsys):
    assert main(["bench", "--run-dir", str(tmp_path / "b"), "--steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --steps must be at least 1, not 0"


def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path, fixture_root, capsys):
    (tmp_path / "a_file").write_text("")
    run = tmp_path / "a_file" / "run"
    assert main(["prepare", "--run-dir", str(run), "--data-dir", str(fixture_root), "--fast", "true"]) == 3
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"error: Not a directory: {run}" and "Traceback" not in err


def test_cli_refuses_an_unknown_recipe(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--recipe", "nope"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_run_prepared_with_seed_7_and_batch_32_keeps_both(tmp_path, fixture_root, monkeypatch):
    """Later steps and their overrides never write config.json back."""
    monkeypatch.setenv("BRAIN_CACHE_DIR", str(tmp_path / "cache"))
    run = str(tmp_path / "run")
    base = ["--run-dir", run, "--data-dir", str(fixture_root), "--num-threads", "1"]
    assert main(["prepare", *base, "--seed", "7", "--batch-size", "32", "--fast", "true"]) == 0
    saved = read_run_config(run)
    assert (saved["seed"], saved["batch_size"]) == (7, 32)
    assert main(["train", *base, "--epochs", "1", "--batch-size", "16"]) == 0  # an override for this step only
    assert main(["evaluate", *base, "--device", "cpu"]) == 0
    assert read_run_config(run) == saved
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_test"] > 0


@pytest.mark.parametrize("command", list(COMMAND_SETTINGS))
def test_every_flag_in_help_has_a_line_and_a_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    flags = [f for f in set(re.findall(r"(--[a-z][a-z-]+)", text)) if f != "--help"]
    assert flags
    for f in dataclasses.fields(Config):
        shown = f"--{f.name.replace('_', '-')}" in flags
        assert shown == (f.name in COMMAND_SETTINGS[command]), f"{command} --help and {f.name}"
        if shown:
            assert f.metadata["help"] in text


def test_evaluate_help_shows_only_what_evaluate_uses(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert (
        "--lr" not in out
        and "--epochs" not in out
        and "--checkpoint" in out
        and "(default: '1,2,3')" in " ".join(out.split())
    )


def test_compare_with_nothing_evaluated_says_what_to_do(tmp_path, capsys):
    assert main(["compare"]) == 1
    assert "evaluate something first" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 1
