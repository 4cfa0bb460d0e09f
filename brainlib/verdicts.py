"""By-eye readings of images whose label a model contradicts, kept in one file (the repo's is
docs/label_audit/verdicts.csv): they fill the verdict column of the label audit's suspects and of a
checkpoint's error table, and give its test accuracy both ways, on the official labels and with the
labels a reader marked wrong read as the class the reader saw. The official labels are never edited.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .atomic import atomic_path
from .config import CLASS_NAMES
from .errors import DataError

# what a reader can conclude from an image whose label a model contradicts; "label wrong, class
# unknown" is for a "no tumour" image with an obvious lesion whose type one slice cannot tell (or
# that none of the three tumour classes fits, such as several enhancing nodules)
CLASS_UNKNOWN = "label wrong, class unknown"
VERDICTS = ("label wrong", CLASS_UNKNOWN, "ambiguous", "model wrong")
VERDICT_COLUMNS = ("path", "given", "read_as", "verdict", "reading")


def read_verdicts(path: str | Path) -> pd.DataFrame:
    """By-eye readings, one row per image: path (as in the manifest), the given label, the class the
    reader sees (`read_as`; required when the verdict is "label wrong"), the verdict (one of VERDICTS)
    and the reading in words. Refuses an unknown verdict or class with the row's path."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} not found: a CSV of by-eye readings ({', '.join(VERDICT_COLUMNS)})")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in VERDICT_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)}")
    for row in table.itertuples():
        if row.verdict not in VERDICTS:
            raise DataError(f"{path}: {row.path}: verdict {row.verdict!r} is not one of {', '.join(VERDICTS)}")
        if row.given not in CLASS_NAMES or (row.read_as and row.read_as not in CLASS_NAMES):
            raise DataError(f"{path}: {row.path}: given and read_as must be class names ({', '.join(CLASS_NAMES)})")
        if row.verdict == "label wrong" and (not row.read_as or row.read_as == row.given):
            raise DataError(f"{path}: {row.path}: a wrong label needs read_as, the class the image shows")
        if row.verdict == CLASS_UNKNOWN and row.read_as:
            raise DataError(f"{path}: {row.path}: {CLASS_UNKNOWN!r} leaves read_as empty (or say 'label wrong')")
    if table["path"].duplicated().any():
        raise DataError(f"{path}: {table['path'][table['path'].duplicated()].iloc[0]} is read twice")
    return table


def with_verdicts(table: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """`table` (suspects or errors, with a `path` column) with its verdict column filled from the
    readings; rows nobody read keep an empty verdict."""
    read = verdicts.set_index("path")["verdict"]
    out = table.copy()
    out["verdict"] = out["path"].map(read).fillna("")
    return out


AUDIT_LISTS = ("label_issues.csv", "review.csv", "copies_of_flags.csv")
AUDIT_DIR = "label_audit"  # a run's audit: runs/<run>/label_audit/
AUDIT_SUMMARY = "label_audit.json"


def audit_root(folder: str | Path) -> Path:
    """An audit's folder of fold<k>/ and label_audit.json: a run folder's label_audit/, or the folder given
    (a committed copy of an audit, as docs/label_audit keeps them). Here rather than in label_audit, which
    imports the training loop, so that the model card finds an audit the way the audit finds its members."""
    folder = Path(folder)
    return folder / AUDIT_DIR if (folder / AUDIT_DIR).is_dir() else folder


def fill_verdict_columns(folder: str | Path, verdicts: pd.DataFrame) -> list[Path]:
    """Rewrite the verdict column of every label-audit list (AUDIT_LISTS) in `folder` and in the folders
    below it (an audit kept beside another, such as one with another recipe or scored at another side)
    from the readings, each file whole or not at all. Lists written before the audit had a verdict column
    are left as they are."""
    folder = Path(folder)
    written = []
    for listed in sorted(p for name in AUDIT_LISTS for p in folder.rglob(name)):
        table = pd.read_csv(listed)
        if "verdict" not in table.columns:
            continue
        with atomic_path(listed) as tmp:
            with_verdicts(table, verdicts).to_csv(tmp, index=False)
        written.append(listed)
    return written


def how_read(table: pd.DataFrame, verdicts: pd.DataFrame) -> tuple[str, int, int]:
    """How the rows of `table` (a list with a `path` column, such as the label audit's flags) read by eye:
    the verdicts counted in VERDICTS order ("1 label wrong, 15 ambiguous, ..."), how many rows were read and
    how many in all."""
    read = with_verdicts(table, verdicts)["verdict"]
    read_ones = read[read != ""]
    return counted(read_ones), len(read_ones), len(read)


def counted(verdicts: pd.Series, zeros: bool = False) -> str:
    """'1 label wrong, 5 label wrong (class unknown), 15 ambiguous': readings counted in VERDICTS order
    (with the verdicts no reading gave, as 0, when `zeros`)."""
    counts = verdicts.value_counts()
    named = {CLASS_UNKNOWN: "label wrong (class unknown)"}  # its comma would read as a list's
    return ", ".join(f"{counts.get(v, 0)} {named.get(v, v)}" for v in VERDICTS if zeros or v in counts)


def accuracy_both_ways(predictions: pd.DataFrame, verdicts: pd.DataFrame) -> dict:
    """A checkpoint's accuracy on the official labels, and with every label a reader marked wrong
    replaced by the class the reader saw (`predictions`: path, label, pred, as evaluate writes them);
    images whose label is wrong but whose class the reader could not tell leave the relabelled count
    (no answer can be scored there), and how many of them the checkpoint still gives the wrong label
    is reported. Refuses a reading whose given label is not the file's: it was written for other data."""
    read = verdicts[verdicts["path"].isin(predictions["path"])].set_index("path")
    labels = predictions.set_index("path")["label"]
    wrong = read[read["verdict"].isin(["label wrong", CLASS_UNKNOWN])]
    mismatch = wrong.index[wrong["given"].to_numpy() != labels.loc[wrong.index].to_numpy()]
    if len(mismatch):
        raise DataError(f"{mismatch[0]}: the reading's given label is not the file's ({labels[mismatch[0]]})")
    on_test = read[read["verdict"] == "label wrong"]
    unknown = read.index[read["verdict"] == CLASS_UNKNOWN]
    relabelled = labels.copy()
    relabelled.loc[on_test.index] = on_test["read_as"]
    pred = predictions.set_index("path")["pred"]
    scored = ~labels.index.isin(unknown)
    return {
        "n_images": int(len(labels)),
        "errors_official": int((pred != labels).sum()),
        "accuracy_official": float((pred == labels).mean()),
        "n_labels_read_as_wrong": int(len(on_test)),
        "labels_read_as_wrong": sorted(on_test.index),
        "n_labels_wrong_class_unknown": int(len(unknown)),
        "labels_wrong_class_unknown": sorted(unknown),
        "class_unknown_given_label_predicted": int((pred[unknown] == labels[unknown]).sum()),
        "n_images_relabelled": int(scored.sum()),
        "errors_relabelled": int((pred != relabelled)[scored].sum()),
        "accuracy_relabelled": float((pred == relabelled)[scored].mean()),
        "n_read": int(len(read)),
    }
