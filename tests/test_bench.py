"""The benchmark runs both pipelines end to end (it measures; it asserts no timing)."""

import json


def test_benchmark_runs_both_pipelines(prepared_run, tmp_path):
    from brainlib.bench import run_benchmark

    out = tmp_path / "bench.json"
    results = run_benchmark(prepared_run.replace(batch_size=4), steps=1, warmup=1, workers=0, out=out)
    assert json.loads(out.read_text())["steps"] == 1
    for key in ("plain_train_images_per_s", "brainlib_train_images_per_s", "plain_eval_images_per_s", "brainlib_eval_images_per_s"):
        assert results[key] > 0
