"""The benchmark runs both pipelines end to end (it measures; it asserts no timing)."""

import json


def test_benchmark_runs_both_pipelines(prepared_run, tmp_path):
    from brainlib.bench import run_benchmark

    out = tmp_path / "bench.json"
    results = run_benchmark(prepared_run.replace(batch_size=4), steps=1, warmup=1, workers=0, out=out)
    assert json.loads(out.read_text())["steps"] == 1
    for key in (
        "plain_train_images_per_s",
        "brainlib_train_images_per_s",
        "plain_eval_images_per_s",
        "brainlib_eval_images_per_s",
    ):
        assert results[key] > 0


def test_benchmark_repeats_a_small_runs_batches(prepared_run):
    """More warm-up + timed steps than the run has batches: the batches are repeated, not a
    StopIteration stack trace (a `fast` run benchmarked with the default step count)."""
    from brainlib.bench import run_benchmark
    from brainlib.loader import load_run_data, split_batches

    cfg = prepared_run.replace(batch_size=8)
    batches = len(split_batches(cfg, load_run_data(cfg), "train", train=True))
    results = run_benchmark(cfg, steps=2 * batches + 1, warmup=1, workers=0)
    assert results["brainlib_train_images_per_s"] > 0 and results["plain_train_images_per_s"] > 0


def test_benchmark_with_no_whole_batch_is_a_clear_error(prepared_run):
    """The plain pipeline drops the last partial batch: a batch size above the split's image count
    leaves nothing to time, which must be one DataError, not an endless loop or a StopIteration."""
    import pytest

    from brainlib.bench import run_benchmark
    from brainlib.errors import DataError

    with pytest.raises(DataError, match="no whole batch"):
        run_benchmark(prepared_run.replace(batch_size=10_000), steps=1, warmup=1, workers=0)


def test_a_busy_machine_is_said_before_the_timings(monkeypatch, prepared_run, capsys):
    from brainlib import bench

    monkeypatch.setattr(bench.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    assert bench.machine_load() == {"load_average_1min": 3.0, "cores": 2, "busy": True}
    results = bench.run_benchmark(prepared_run.replace(batch_size=4), steps=1, warmup=1, workers=0)
    assert results["machine"]["load"]["busy"] and "another job is running" in capsys.readouterr().err
    assert results["recipe"] == prepared_run.recipe and results["acquisition_aug"] is prepared_run.acquisition_aug
