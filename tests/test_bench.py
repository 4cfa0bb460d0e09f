"""The benchmark runs both pipelines end to end (it measures; it asserts no timing)."""

import json

import pytest


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


def test_a_recipe_that_scores_at_a_larger_side_is_timed_there_too(prepared_run, capsys):
    from brainlib.bench import run_benchmark

    cfg = prepared_run.replace(model="resnet18_scratch", image_size=64, test_image_size=96, batch_size=4)
    results = run_benchmark(cfg, steps=1, warmup=1, workers=0)
    assert results["scoring_size"] == 96 and results["brainlib_eval_at_scoring_size_images_per_s"] > 0
    assert "scoring side, 96 px" in capsys.readouterr().out
    # a recipe scored at its training side reports one scoring speed, as before
    assert "scoring_size" not in run_benchmark(cfg.replace(test_image_size=0), steps=1, warmup=1, workers=0)


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


def test_busy_cores_are_other_processes_not_this_one():
    from brainlib.machine_load import others_busy_cores

    assert others_busy_cores(busy_s=2.0, own_s=1.5, wall_s=1.0) == pytest.approx(0.5)
    assert others_busy_cores(busy_s=1.0, own_s=1.2, wall_s=1.0) == 0.0  # rounding of the tick counters
    assert others_busy_cores(busy_s=1.0, own_s=0.0, wall_s=0.0) == 0.0


def test_machine_load_reads_proc_stat_over_a_window(monkeypatch):
    """Two cores: the machine busy for 1.8 CPU-s in one second, 0.3 of them this process's own: others
    use 1.5 cores, which is busy; the load average (which counts this process's work before the window)
    is only reported."""
    from types import SimpleNamespace

    from brainlib import machine_load as ml

    monkeypatch.setattr(ml.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(ml.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    monkeypatch.setattr(ml, "_busy_cpu_s", iter([100.0, 101.8]).__next__)
    monkeypatch.setattr(ml, "_own_cpu_s", iter([5.0, 5.3]).__next__)
    monkeypatch.setattr(ml, "time", SimpleNamespace(monotonic=iter([10.0, 11.0]).__next__, sleep=lambda s: None))
    load = ml.machine_load()
    assert load == {"others_busy_cores": 1.5, "load_average_1min": 0.2, "cores": 2, "busy": True}
    assert "other processes are using 1.5 of 2 cores" in ml.busy_warning(load)

    # the benchmark's own preparation raised the load average, nobody else is on the cores: not busy
    monkeypatch.setattr(ml.os, "getloadavg", lambda: (1.09, 0.5, 0.2))
    monkeypatch.setattr(ml, "_busy_cpu_s", iter([100.0, 100.4]).__next__)
    monkeypatch.setattr(ml, "_own_cpu_s", iter([5.0, 5.3]).__next__)
    monkeypatch.setattr(ml, "time", SimpleNamespace(monotonic=iter([10.0, 11.0]).__next__, sleep=lambda s: None))
    assert ml.machine_load()["busy"] is False


def test_machine_load_without_proc_stat_falls_back_to_the_load_average(monkeypatch, tmp_path):
    from brainlib import machine_load as ml

    monkeypatch.setattr(ml, "_PROC_STAT", tmp_path / "absent")
    monkeypatch.setattr(ml.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(ml.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    load = ml.machine_load()
    assert load == {"load_average_1min": 3.0, "cores": 2, "busy": True}
    assert "load average 3.0 on 2 cores" in ml.busy_warning(load)


def test_machine_load_here_is_a_reading():
    from brainlib.machine_load import machine_load

    load = machine_load(window_s=0.2)
    assert load["cores"] >= 1 and isinstance(load["busy"], bool)
    assert load.get("others_busy_cores", 0.0) >= 0.0


def test_a_busy_machine_is_said_before_the_timings(monkeypatch, prepared_run, capsys):
    from brainlib import bench

    busy = {"others_busy_cores": 1.4, "load_average_1min": 3.0, "cores": 2, "busy": True}
    monkeypatch.setattr(bench, "machine_load", lambda: busy)
    results = bench.run_benchmark(prepared_run.replace(batch_size=4), steps=1, warmup=1, workers=0)
    assert results["machine"]["load"]["busy"] and "another job is running" in capsys.readouterr().err
    assert results["recipe"] == prepared_run.recipe and results["acquisition_aug"] is prepared_run.acquisition_aug
