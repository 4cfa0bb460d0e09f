"""scripts/audit_finished_folds.py: the report on "no tumour" images a reader saw a lesion in compares them with
the other scored "no tumour" images of their split, and leaves unscored ones out."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "audit_finished_folds.py"


def _script():
    spec = importlib.util.spec_from_file_location("audit_finished_folds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lesion_report_counts_against_the_split_peers(capsys):
    # rows 0-3 listed lesions (row 3 not scored yet), 4-11 other Testing "no tumour", 12-13 Training "no tumour"
    # (another split: not peers), 14 a Testing glioma (another class: not a peer)
    split = ["Testing"] * 12 + ["Training"] * 2 + ["Testing"]
    label = [2] * 14 + [0]
    manifest = pd.DataFrame(
        {"path": [f"{s}/x/{i}.jpg" for i, s in enumerate(split)], "split_on_disk": split, "label_idx": label}
    )
    probs = np.zeros((15, 4))
    probs[:, 2] = 0.97
    probs[:, 0] = 0.03
    probs[[0, 1], 2], probs[[0, 1], 0] = 0.2, 0.8  # two lesions called glioma
    probs[2, 2], probs[2, 0] = 0.6, 0.4
    probs[4, 2], probs[4, 0] = 0.4, 0.6  # one peer called glioma
    probs[12, 2], probs[12, 0] = 0.1, 0.9  # a Training image called glioma: not counted
    scored = np.ones(15, bool)
    scored[3] = False
    _script().lesion_report(manifest, probs, scored, manifest["path"][:4].tolist())
    out = capsys.readouterr().out
    assert "lesion images scored: 3 of 4; called a tumour: 2 (0, 1) against 1 of the other 8" in out
    # p(notumor) of the lesions 0.2, 0.2, 0.6 against 0.4 and seven 0.97: 23 of 24 pairs ordered, none tied
    assert "AUROC 0.96" in out
