"""The pipeline's time estimate and the shift-suite choice it makes, and the CPU precision policy."""

import pytest

from brainlib import infer, plan
from brainlib.config import DEFAULT_RECIPE, SHORTER_RECIPE, build_config
from brainlib.shifts import SEVERITIES


def test_estimate_scales_measured_rates_and_samples_the_suite_only_where_it_is_slow():
    cfg = build_config({}, {})  # the default recipe
    fast = plan.estimate(cfg, plan.Rates(train_images_per_s=1000, score_images_per_s=2000))
    assert fast["shift_suite"] == {"severities": SEVERITIES, "sample": 0}
    assert fast["03_train"] == pytest.approx(cfg.epochs * (5134 / 1000 + 578 / 2000))
    slow = plan.estimate(cfg, plan.Rates(train_images_per_s=10, score_images_per_s=50))
    assert (
        slow["full_shift_suite_s"] == pytest.approx(76 * 1311 / 50)
        and slow["full_shift_suite_s"] > plan.FULL_SUITE_BUDGET_S
    )
    assert slow["shift_suite"] == plan.SAMPLED_SUITE
    assert slow["04_evaluate"] < slow["full_shift_suite_s"]  # the sample is what makes 04 affordable


def test_measured_rates_are_positive_on_a_tiny_model(tmp_path):
    cfg = build_config(
        {}, {"recipe": "reference", "batch_size": 2, "image_size": 224, "cache_size": 224, "device": "cpu"}
    )
    rates = plan.measure_rates(cfg, "cpu", steps=1)
    assert rates.train_images_per_s > 0 and rates.score_images_per_s > 0
    assert plan.auto_shift_suite(cfg, n_test=4) == (SEVERITIES, 0)  # four images: the full suite is cheap


def test_the_plan_says_when_another_job_is_on_the_cores(monkeypatch, capsys):
    """The estimate is only as quiet as the machine: a busy one gets a warning before the numbers."""
    cfg = build_config(
        {}, {"recipe": "reference", "batch_size": 2, "image_size": 224, "cache_size": 224, "device": "cpu"}
    )
    busy = {"others_busy_cores": 1.2, "load_average_1min": 2.0, "cores": 2, "busy": True}
    monkeypatch.setattr(plan, "machine_load", lambda: busy)
    times = plan.print_plan(cfg)
    out = capsys.readouterr().out
    assert "other processes are using 1.2 of 2 cores" in out and times["03_train"] > 0
    assert out.index("warning") < out.index("pipeline plan")


@pytest.mark.parametrize(
    ("flags", "onednn", "expected"),
    [
        ("fpu avx512f avx512bw", True, False),
        ("avx512f avx512_bf16", True, True),
        ("amx_bf16 amx_tile", True, True),
        ("avx2", False, False),
    ],
    ids=["avx512 emulates bf16", "avx512_bf16", "amx", "no onednn bf16"],
)
def test_bf16_autocast_on_a_cpu_only_with_bf16_instructions(monkeypatch, flags, onednn, expected):
    monkeypatch.setattr(infer.Path, "read_text", lambda self: f"processor : 0\nflags : {flags}\n")
    monkeypatch.setattr(infer.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert infer.cpu_has_native_bf16() is expected
    assert infer.use_bf16("cpu", "auto") is expected and infer.use_bf16("cuda", "auto") is True


def test_plain_progress_lines_under_make_pipeline(monkeypatch, capsys):
    from brainlib.progress import progress

    monkeypatch.setenv("BRAIN_PROGRESS", "lines")
    assert list(progress(range(3), "shift suite", every_s=0)) == [0, 1, 2]
    assert capsys.readouterr().out.splitlines() == [f"shift suite: {k}/3 in 0 s" for k in (1, 2, 3)]
    monkeypatch.delenv("BRAIN_PROGRESS")
    assert hasattr(progress(range(3), "bar", disable=True), "set_postfix")  # a tqdm bar otherwise


def test_a_long_default_plan_offers_the_shorter_recipe_timed_here(monkeypatch, capsys):
    """Where the default recipe would take hours, the plan times the shorter one too and names it."""
    cfg = build_config({}, {"device": "cpu"})  # the default recipe
    measured = []

    def rates(c, device):
        measured.append(c.recipe)
        return plan.Rates(train_images_per_s=5, score_images_per_s=50)  # a slow CPU: hours

    monkeypatch.setattr(plan, "measure_rates", rates)
    monkeypatch.setattr(plan, "machine_load", lambda: {"busy": False})
    plan.print_plan(cfg)
    out = capsys.readouterr().out
    assert measured == [DEFAULT_RECIPE, SHORTER_RECIPE]
    assert f"make pipeline RECIPE={SHORTER_RECIPE} (224 px, 10 epochs)" in out
    monkeypatch.setattr(plan, "measure_rates", lambda c, device: plan.Rates(1000, 2000))
    plan.print_plan(cfg)
    assert "shorter" not in capsys.readouterr().out  # a fast machine: no second measurement, no offer
