"""Duplicate and leakage audit.

Exact duplicates: same file bytes, or same decoded pixels. Near duplicates: a 256-bit
difference hash (dHash on a 17x16 thumbnail) within a Hamming threshold. 64-bit hashes are
too coarse for MRI slices (they pair different patients' scans); 256 bits with a small
threshold, checked for a plateau in 01_data, are not.

A copy may also be mirrored, upside down or turned half a turn: the dataset's sources stored
augmented copies. Each image's hash is therefore also compared with the hashes of the others'
three flipped thumbnails. On the real data, at 14 bits, the flipped relations add 15,219 pairs to
5,128 unflipped ones and give 995 of the 1,311 test images a Training twin (497 before, unflipped
at 10 bits): all 405 "no tumour" images, 287 of 306 meningioma, 220 of 300 pituitary, 83 of 300
glioma. Pairs looked at side by side up to 18 bits are one slice flipped and often re-contrasted;
the 4 pairs whose labels disagree are each one sellar slice filed once as meningioma and once,
mirrored, as pituitary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Hamming distance out of 256 bits: the knee of the sweep over all four orientations (01_data's
# figure): test images with a Training twin 896, 948, 982, 995, 998, 1,010 at 8-18 bits
NEAR_THRESHOLD = 14


def dhash_bits(thumbs: np.ndarray) -> np.ndarray:
    """N x 16 x 17 uint8 thumbnails -> N x 32 packed bytes (left pixel brighter than right)."""
    diff = thumbs[:, :, 1:] > thumbs[:, :, :-1]
    return np.packbits(diff.reshape(len(thumbs), -1), axis=1)


# how a copy may be turned, as an operation on N x H x W thumbnails
ORIENTATIONS = {
    "same": lambda t: t,
    "mirrored": lambda t: t[:, :, ::-1],
    "upside down": lambda t: t[:, ::-1, :],
    "half turn": lambda t: t[:, ::-1, ::-1],
}


def hamming_pairs(
    bits: np.ndarray, max_distance: int, chunk: int = 512, other: np.ndarray | None = None
) -> pd.DataFrame:
    """All pairs i < j with Hamming distance <= max_distance, as columns i, j, distance; with
    `other` (the same images hashed another way), the distance between bits[i] and other[j] for
    every i != j, each unordered pair once at its smallest distance."""
    # the 32 bytes of a hash as four 64-bit words, one chunk-by-all XOR and popcount per word, summed
    # in place (7,023 images in four orientations: 7.1 s byte by byte, 1.6 s so, on 2 cores; the same pairs)
    words = _as_words(bits)
    against = np.ascontiguousarray(_as_words(bits if other is None else other).T)  # word k of every hash in a row
    found = []
    for start in range(0, len(bits), chunk):
        block = words[start : start + chunk]
        dist = np.zeros((len(block), against.shape[1]), np.int32)
        for k in range(len(against)):
            dist += np.bitwise_count(block[:, k, None] ^ against[k][None, :])
        ii, jj = np.nonzero(dist <= max_distance)
        ii = ii + start
        keep = ii < jj if other is None else ii != jj
        found.append(np.stack([ii[keep], jj[keep], dist[ii[keep] - start, jj[keep]]], axis=1))
    pairs = np.concatenate(found) if found else np.zeros((0, 3), int)
    if other is None:  # i < j: each pair is already there once
        return pd.DataFrame(pairs, columns=["i", "j", "distance"])
    pairs = np.concatenate([np.sort(pairs[:, :2], axis=1), pairs[:, 2:]], axis=1)
    return _each_pair_once(pd.DataFrame(pairs, columns=["i", "j", "distance"]))


def _as_words(bits: np.ndarray) -> np.ndarray:
    """N x B packed bytes -> N x ceil(B / 8) uint64 words (zero-padded; zeros add no distance)."""
    padded = np.zeros((len(bits), -(-bits.shape[1] // 8) * 8), np.uint8)
    padded[:, : bits.shape[1]] = bits
    return padded.view(np.uint64)


def _each_pair_once(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (i, j), the one at the smallest distance (the first listed on a tie), ordered by i, j."""
    return (
        pairs.sort_values("distance", kind="stable")
        .drop_duplicates(["i", "j"])
        .sort_values(["i", "j"], ignore_index=True)
    )


def near_pairs(thumbs: np.ndarray, max_distance: int) -> pd.DataFrame:
    """Near pairs in any orientation (ORIENTATIONS): i, j, distance, orientation; a pair near in
    several orientations is listed at its smallest distance, "same" first on a tie."""
    bits = dhash_bits(thumbs)
    found = []
    for name, turn in ORIENTATIONS.items():
        other = None if name == "same" else dhash_bits(np.ascontiguousarray(turn(thumbs)))
        found.append(hamming_pairs(bits, max_distance, other=other).assign(orientation=name))
    return _each_pair_once(pd.concat(found, ignore_index=True))


def connected_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find: group id (the smallest member index) for each of n items."""
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def _group_by_value(values: pd.Series) -> np.ndarray:
    first = {}
    return np.array([first.setdefault(v, i) for i, v in enumerate(values)])


@dataclass
class AuditResult:
    manifest: pd.DataFrame  # with group ids and twin flags
    near_pairs: pd.DataFrame  # i, j, distance for pairs within the threshold
    summary: dict


def audit_duplicates(manifest: pd.DataFrame, thumbs: np.ndarray, threshold: int = NEAR_THRESHOLD) -> AuditResult:
    """Group duplicates and flag every test image that has a twin in Training."""
    m = manifest.reset_index(drop=True).copy()
    # exact: same bytes or same decoded pixels (union of both relations)
    by_bytes = _group_by_value(m["file_sha256"])
    by_pixels = _group_by_value(m["pixel_sha1"])
    exact_pairs = np.array([(i, g) for groups in (by_bytes, by_pixels) for i, g in enumerate(groups) if i != g])
    m["exact_group"] = connected_groups(len(m), exact_pairs.reshape(-1, 2))
    bits = dhash_bits(thumbs)
    m["dhash"] = [row.tobytes().hex() for row in bits]
    near = near_pairs(thumbs, threshold)
    near_edges = np.concatenate([near[["i", "j"]].to_numpy(), exact_pairs.reshape(-1, 2)])
    m["near_group"] = connected_groups(len(m), near_edges)

    is_train = (m["split_on_disk"] == "Training").to_numpy()
    for kind in ("exact", "near"):
        group = m[f"{kind}_group"]
        train_groups = set(group[is_train])
        m[f"has_train_twin_{kind}"] = (~is_train) & group.isin(train_groups).to_numpy()
        sizes = group.map(group.value_counts())
        m[f"{kind}_dup"] = sizes > 1
        labels_per_group = m.groupby(f"{kind}_group")["label"].nunique()
        m[f"{kind}_label_conflict"] = group.map(labels_per_group) > 1

    def within(split: str, kind: str) -> int:
        """Images in `split` that share a group with another image of the same split."""
        part = m[m["split_on_disk"] == split]
        return int(part[f"{kind}_group"].duplicated(keep=False).sum())

    test = m[~is_train]
    summary = {
        "near_threshold_bits": threshold,
        "hash_bits": int(bits.shape[1] * 8),
        "n_images": len(m),
        "test_with_train_twin_exact": int(test["has_train_twin_exact"].sum()),
        "test_with_train_twin_near": int(test["has_train_twin_near"].sum()),
        "n_test": len(test),
        "within_training_exact": within("Training", "exact"),
        "within_training_near": within("Training", "near"),
        "within_testing_exact": within("Testing", "exact"),
        "within_testing_near": within("Testing", "near"),
        "exact_groups_with_label_conflict": int(m.loc[m["exact_label_conflict"], "exact_group"].nunique()),
        "near_groups_with_label_conflict": int(m.loc[m["near_label_conflict"], "near_group"].nunique()),
        "near_pairs_by_orientation": {name: int((near["orientation"] == name).sum()) for name in ORIENTATIONS},
    }
    return AuditResult(m, near, summary)


def threshold_sweep(thumbs: np.ndarray, manifest: pd.DataFrame, thresholds: range) -> pd.DataFrame:
    """How many test images get a Training twin as the threshold moves: it should plateau."""
    pairs = near_pairs(thumbs, max(thresholds))
    is_train = (manifest["split_on_disk"] == "Training").to_numpy()
    rows = []
    for t in thresholds:
        sel = pairs[pairs["distance"] <= t]
        cross = is_train[sel["i"]] != is_train[sel["j"]]
        test_idx = np.where(is_train[sel["i"]], sel["j"], sel["i"])[cross]
        rows.append({"threshold": t, "pairs": len(sel), "test_images_with_train_twin": len(np.unique(test_idx))})
    return pd.DataFrame(rows)


def example_pairs(near_pairs: pd.DataFrame, low: int, high: int, k: int, seed: int = 0) -> pd.DataFrame:
    """Up to k random near pairs with low <= distance <= high (to eyeball the threshold)."""
    band = near_pairs[(near_pairs["distance"] >= low) & (near_pairs["distance"] <= high)]
    return band.sample(min(k, len(band)), random_state=seed) if len(band) else band
