"""Scoring on the CPU through ONNX Runtime.

On a 2-core Xeon (AVX-512, fp32) the default checkpoint's clean test pass (1,311 cached images to
logits and OOD features, batches of 64 at 256 px, each engine in its own process) ran at 91-93 img/s
in PyTorch eager with BatchNorm and padding folded and at 147-148 img/s in ONNX Runtime, with every
prediction and OOD flag the same (logits within 1.6e-5). So a checkpoint loaded for scoring on the CPU
(checkpoint.load_for_inference) is exported once to ONNX and run by ONNX Runtime; its graph also
returns the spatial mean of each feature layer the OOD detector reads, so one run gives logits and
features. Grad-CAM needs gradients and keeps the PyTorch model; training and its per-epoch
validation stay in PyTorch; an ensemble scores in PyTorch; on a GPU PyTorch's CUDA kernels score.

Exports are cached under the cache folder by a digest of the folded weights, the architecture and the
torch version, so `predict` on one image pays the export (5-15 s) only the first time.
BRAIN_CPU_ENGINE=torch scores in PyTorch instead (for comparison).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path
from .config import default_cache_dir
from .models import fold_for_inference

ONNX_OPSET = 17
ENGINE_VARIABLE = "BRAIN_CPU_ENGINE"


def engine_for(device: str) -> str:
    """ "onnxruntime" for CPU scoring, unless BRAIN_CPU_ENGINE=torch or the package is missing;
    "torch" on a GPU (PyTorch's CUDA kernels are the fast ones there)."""
    if torch.device(device).type != "cpu" or os.environ.get(ENGINE_VARIABLE, "onnxruntime") == "torch":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


class _LogitsAndPooled(nn.Module):
    """The graph that is exported: logits, then the spatial mean of each of `layers`' outputs."""

    def __init__(self, model: nn.Module, layers: list[nn.Module]):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_hook(lambda _m, _i, out: pooled.append(out.mean((2, 3)))) for layer in self.layers
        ]
        try:
            logits = self.model(x)
        finally:
            for hook in hooks:
                hook.remove()
        return (logits, *pooled)


class OnnxRuntimeModel(nn.Module):
    """A scoring model run by ONNX Runtime: forward(x) gives the logits, and each of `feature_taps` is
    called with its layer's pooled output (shape N×C×1×1), so forward hooks on the taps see what hooks
    on the PyTorch layers see after their spatial mean (infer.predict_logits_and_features)."""

    def __init__(self, session, n_features: int):
        super().__init__()
        self.session = session
        self.feature_taps = nn.ModuleList(nn.Identity() for _ in range(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = {"x": x.detach().float().contiguous().cpu().numpy()}
        logits, *pooled = self.session.run(None, inputs)
        for tap, features in zip(self.feature_taps, pooled):
            tap(torch.from_numpy(features)[:, :, None, None])
        return torch.from_numpy(logits)


def graph_digest(model: nn.Module, image_size: int, n_features: int) -> str:
    """What the exported graph depends on: the folded weights, the architecture as built, the input
    side, the number of feature outputs and the exporter's version."""
    h = hashlib.sha256()
    h.update(f"{type(model).__name__}|{model}|{image_size}|{n_features}|{torch.__version__}|{ONNX_OPSET}".encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return h.hexdigest()[:24]


def export(model: nn.Module, layers: list[nn.Module], image_size: int, path: Path) -> Path:
    """Write the ONNX graph of `model` (logits and the pooled `layers`), batch size left free."""
    model.eval()
    example = torch.zeros(2, 3, image_size, image_size)
    names = ["logits"] + [f"features{i}" for i in range(len(layers))]
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter: no onnxscript needed, 2-3 times quicker than the dynamo one here;
        # its warnings are about constant folding of the mirror view's slice, which it leaves to the runtime
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LogitsAndPooled(model, layers),
            (example,),
            str(tmp),
            input_names=["x"],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in ["x", *names]},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return path


def session_model(model: nn.Module, layers: list[nn.Module], image_size: int, cache: bool = True) -> OnnxRuntimeModel:
    """`model` (and the pooled outputs of `layers`) as an ONNX Runtime session with as many threads as
    PyTorch uses. cache=False exports to a temporary file (a model that will not be loaded again)."""
    import onnxruntime as ort

    digest = graph_digest(model, image_size, len(layers))
    path = default_cache_dir() / "onnx" / f"{digest}.onnx"
    graph = None
    if cache and not path.exists():
        print(f"exporting the model to ONNX for CPU scoring (once per checkpoint): {path}", file=sys.stderr)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            export(model, layers, image_size, path)
        except OSError as err:  # a read-only cache folder: export for this process only
            print(f"could not write {path} ({err.strerror}); exporting for this run only", file=sys.stderr)
    if cache and path.exists():
        graph = path.read_bytes()
    if graph is None:
        with tempfile.TemporaryDirectory() as tmp:
            graph = export(model, layers, image_size, Path(tmp) / "model.onnx").read_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    return OnnxRuntimeModel(session, len(layers)).eval()


def as_scored(model: nn.Module, device: str, image_size: int) -> nn.Module:
    """A model built for timing (plan, bench) as the scoring paths run a checkpoint on `device`:
    BatchNorm and padding folded, and on the CPU through the runtime (not cached: never loaded again)."""
    model = fold_for_inference(model.eval())
    return session_model(model, [], image_size, cache=False) if engine_for(device) == "onnxruntime" else model
