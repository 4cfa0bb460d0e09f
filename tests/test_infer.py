"""The inference policy: fp32 scoring by default, one batched loop, temperature scaling."""

import pytest
import torch

from brainlib import calibration, infer
from brainlib.errors import SettingsError


def test_temperature_scaling_recovers_a_known_temperature():
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 4, generator=gen) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    assert calibration.fit_temperature(true_logits * 3, labels) == pytest.approx(3, rel=0.1)


def test_calibrate_divides_logits_and_keeps_predictions():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    p = calibration.calibrate(logits, 2.0)
    assert torch.allclose(p, (logits / 2).softmax(1)) and p.argmax() == logits.argmax()
    assert torch.allclose(calibration.calibrate(logits, None), logits.softmax(1))


def test_scoring_is_fp32_unless_asked_and_the_loop_keeps_order():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.is_autocast_cpu_enabled())
            return x.flatten(1)[:, :4]

    batches = [(torch.arange(8.0).view(2, 4) + 10 * i, None) for i in range(3)]
    out = infer.predict_logits(Probe(), batches, "cpu")
    assert out.dtype == torch.float32 and out[:, 0].tolist() == [0, 4, 10, 14, 20, 24]
    assert seen == [False] * 3 and infer.SCORING_PRECISION == "fp32"
    infer.predict_logits(Probe(), batches[:1], "cpu", precision="bf16")
    assert seen[-1] is True


def test_bad_precision_and_missing_cuda_are_settings_errors(monkeypatch):
    with pytest.raises(SettingsError, match="precision"):
        infer.use_bf16("cpu", "fp8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SettingsError, match="CUDA is not available"):
        infer.resolve_device("cuda")
    assert infer.resolve_device("auto") == "cpu"
