"""CPU scoring through ONNX Runtime gives PyTorch's answers: the same logits to float rounding, the
same OOD features, one export per checkpoint, and PyTorch where the runtime does not apply."""

from pathlib import Path

import numpy as np
import pytest
import torch

from brainlib import checkpoint, cpu_engine, evaluate
from brainlib.config import CLASS_NAMES, default_cache_dir
from brainlib.infer import predict_logits_and_features
from brainlib.loader import load_run_data


def _both_engines(path, monkeypatch):
    monkeypatch.setenv(cpu_engine.ENGINE_VARIABLE, "torch")
    reference = checkpoint.load_for_inference(path)
    monkeypatch.delenv(cpu_engine.ENGINE_VARIABLE)
    return reference, checkpoint.load_for_inference(path)


@pytest.mark.parametrize("model_name", ["efficientnet_lite0", "seed_cnn"])
def test_the_runtime_gives_pytorchs_logits_and_features(tmp_path, monkeypatch, model_name):
    from brainlib.models import create_model

    monkeypatch.setenv("BRAIN_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = create_model(model_name)  # EfficientNet-Lite0 with its ImageNet weights: outputs that vary
    model.eval()
    state = {"model_name": model_name, "class_names": list(CLASS_NAMES), "model_state": model.state_dict()}
    state["config"] = {"image_size": 224}
    path = checkpoint.save_checkpoint(state, tmp_path / "m.pt")
    reference, runtime = _both_engines(path, monkeypatch)
    assert (reference.engine, runtime.engine) == ("torch", "onnxruntime")
    x = torch.rand(10, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    batches = [(x[:6], None), (x[6:], None)]  # a short last batch: the batch size is free in the graph
    want_logits, want_features = predict_logits_and_features(reference.model, batches, "cpu", reference.feature_layers)
    logits, features = predict_logits_and_features(runtime.model, batches, "cpu", runtime.feature_layers)
    assert logits.shape == want_logits.shape == (10, 4) and features.shape == want_features.shape
    assert torch.allclose(logits, want_logits, atol=1e-4) and torch.equal(logits.argmax(1), want_logits.argmax(1))
    assert torch.allclose(features, want_features, atol=1e-4)
    assert not torch.allclose(logits[0], logits[1])  # not a constant output


def test_a_checkpoint_is_exported_once_and_a_changed_weight_gets_a_new_graph(trained_run, monkeypatch):
    path = Path(trained_run.run_dir) / "checkpoints" / "best.pt"
    checkpoint.load_for_inference(path)
    assert len(list((default_cache_dir() / "onnx").glob("*.onnx"))) == 1

    def no_export(*_args, **_kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(cpu_engine, "export", no_export)
    assert checkpoint.load_for_inference(path).engine == "onnxruntime"  # from the cache
    net = checkpoint.load_for_inference(path)
    digest = cpu_engine.graph_digest(net.cam_model, net.image_size, 1)
    with torch.no_grad():
        next(net.cam_model.parameters()).add_(1e-3)
    assert cpu_engine.graph_digest(net.cam_model, net.image_size, 1) != digest


def test_evaluate_scores_through_the_runtime_and_says_so(trained_run, monkeypatch):
    data = load_run_data(trained_run)
    metrics = evaluate.compute_metrics(*evaluate.predict_test(trained_run, data, shifts=False))
    assert metrics["scoring"]["engine"] == "onnxruntime"
    monkeypatch.setenv(cpu_engine.ENGINE_VARIABLE, "torch")
    again = evaluate.compute_metrics(*evaluate.predict_test(trained_run, data, shifts=False))
    assert again["scoring"]["engine"] == "torch"
    assert again["confusion_matrix"] == metrics["confusion_matrix"]
    assert np.isclose(again["accuracy"], metrics["accuracy"])


def test_the_engine_is_pytorch_on_a_gpu_and_when_asked():
    assert cpu_engine.engine_for("cuda") == "torch"
    assert cpu_engine.engine_for("cpu") == "onnxruntime"


def test_a_cache_folder_that_cannot_be_written_still_scores(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BRAIN_CACHE_DIR", str(tmp_path / "read-only"))  # no export of this checkpoint there yet
    real_export, calls = cpu_engine.export, []

    def export(model, layers, size, path):
        calls.append(path)
        if len(calls) == 1:  # the cache folder's file
            raise PermissionError(13, "Permission denied")
        return real_export(model, layers, size, path)

    monkeypatch.setattr(cpu_engine, "export", export)
    net = checkpoint.load_for_inference(Path(trained_run.run_dir) / "checkpoints" / "best.pt")
    assert net.engine == "onnxruntime" and len(calls) == 2 and not calls[0].exists()
    assert "exporting for this run only" in capsys.readouterr().err
    assert net.model(torch.zeros(1, 3, net.image_size, net.image_size)).shape == (1, 4)
