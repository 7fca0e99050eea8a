"""Leakage across splits: an image of a later split (valid, test) that is also in an earlier one.

Exact duplicates share a content hash (sha256: the manifest's when there is one). Near duplicates
(the same photo re-encoded, resized, recoloured slightly) share a perceptual hash up to a few bits,
found with a multi-index Hamming search (deepfake.audit.hamming), never by comparing all pairs, and
confirmed by the correlation of their 16x16 grey thumbnails: aligned faces share low frequencies,
so distinct faces can be a few pHash bits apart too, but their thumbnails differ.
A leaked test image measures memory, not detection; a leaked validation image picks the epoch that
memorised best.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from deepfake.audit.hamming import HammingIndex
from deepfake.audit.verdict import FAIL, PASS, Verdict

EXACT, NEAR = "exact", "near"


def _hash_values(hex_hashes: pd.Series) -> np.ndarray:
    return np.array([int(value, 16) for value in hex_hashes], dtype=np.uint64)


def _exact_pairs(images: pd.DataFrame, earlier: str, later: str) -> pd.DataFrame:
    """(later position, earlier position) of every pair of readable images with equal sha256.

    A damaged file has a sha256 too, but it is no image: two empty files, or two saved "403 Forbidden"
    pages, are equal without being a leak (basics reports them as damaged)."""
    known = images[images["sha256"].notna() & images["damaged"].isna()]
    left = known.loc[known["split"] == later, ["sha256"]].reset_index(names="later")
    right = known.loc[known["split"] == earlier, ["sha256"]].reset_index(names="earlier")
    pairs = left.merge(right, on="sha256")[["later", "earlier"]]
    return pairs.assign(kind=EXACT, distance=0, correlation=1.0)


def _unit_thumbnails(thumbnails: pd.Series) -> np.ndarray:
    """Thumbnails as zero-mean unit vectors: their dot product is the correlation."""
    pixels = np.stack([np.frombuffer(t, np.uint8) for t in thumbnails]).astype(np.float32)
    pixels -= pixels.mean(axis=1, keepdims=True)
    return pixels / np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1e-6)


def _correlations(left: np.ndarray, right: np.ndarray, left_index, right_index, block: int = 65536) -> np.ndarray:
    """Row-wise dot products of ``left[left_index]`` and ``right[right_index]``, in bounded memory."""
    return np.concatenate([np.einsum("ij,ij->i", left[left_index[i:i + block]], right[right_index[i:i + block]])
                           for i in range(0, len(left_index), block)] or [np.zeros(0, np.float32)])  # fmt: skip


def _near_pairs(
    images: pd.DataFrame, earlier: str, later: str, max_distance: int, min_correlation: float
) -> pd.DataFrame:
    """(later, earlier, distance, correlation) of every pair within ``max_distance`` pHash bits whose
    thumbnails correlate at ``min_correlation`` or more."""
    hashed = images[images["phash"].notna()]
    base, queries = hashed[hashed["split"] == earlier], hashed[hashed["split"] == later]
    if not (len(base) and len(queries)):
        return pd.DataFrame(columns=["later", "earlier", "distance", "correlation", "kind"])
    index = HammingIndex(_hash_values(base["phash"]), max_distance)
    query_index, base_index, distance = index.query(_hash_values(queries["phash"]))
    correlation = _correlations(_unit_thumbnails(queries["thumbnail"]), _unit_thumbnails(base["thumbnail"]),
                                query_index, base_index)  # fmt: skip
    found = pd.DataFrame({
        "later": queries.index.to_numpy()[query_index],
        "earlier": base.index.to_numpy()[base_index],
        "distance": distance,
        "correlation": correlation,
    })  # fmt: skip
    return found[found["correlation"] >= min_correlation].assign(kind=NEAR)


def find_leaks(images: pd.DataFrame, splits: Sequence[str], max_distance: int, min_correlation: float) -> pd.DataFrame:
    """One row per (image of a later split, earlier split) it has a duplicate in.

    ``images`` holds one row per CSV row: split, row, path, target, damaged (reason or None), sha256,
    phash (hex or NaN) and thumbnail. The partner listed is an exact duplicate when there is one, else
    the nearest; ``partners`` counts all.
    """
    columns = ["later", "earlier", "kind", "distance", "correlation", "partners"]
    found = []
    for i, earlier in enumerate(splits):
        for later in splits[i + 1 :]:
            near = _near_pairs(images, earlier, later, max_distance, min_correlation)
            found_here = [frame for frame in (_exact_pairs(images, earlier, later), near) if len(frame)]
            if not found_here:
                continue
            pairs = pd.concat(found_here)
            # An exact duplicate is also a near one at distance 0: keep the best partner per image.
            pairs["rank"] = (pairs["kind"] != EXACT).astype(int)
            pairs["dissimilarity"] = -pairs["correlation"].astype(float)
            pairs = pairs.sort_values(["later", "rank", "distance", "dissimilarity", "earlier"])
            partners = pairs.drop_duplicates(["later", "earlier"]).groupby("later").size()
            best = pairs.drop_duplicates("later")
            best = best.assign(partners=best["later"].map(partners).to_numpy())
            found.append(best[columns])
    if not found:
        return pd.DataFrame(columns=columns)
    leaks = pd.concat(found, ignore_index=True)
    return leaks.astype({"later": np.int64, "earlier": np.int64, "distance": np.int64, "correlation": float,
                         "partners": np.int64})  # fmt: skip


def leak_counts(leaks: pd.DataFrame, images: pd.DataFrame, splits: Sequence[str]) -> list[dict]:
    """Per (earlier, later) split pair: leaked images of the later split, exact and near, and their share."""
    counts = []
    for i, earlier in enumerate(splits):
        for later in splits[i + 1 :]:
            pair = leaks[(images["split"].to_numpy()[leaks["earlier"]] == earlier)
                         & (images["split"].to_numpy()[leaks["later"]] == later)]  # fmt: skip
            n_later = int((images["split"] == later).sum())
            exact, near = int((pair["kind"] == EXACT).sum()), int((pair["kind"] == NEAR).sum())
            counts.append({"earlier": earlier, "later": later, "exact": exact, "near": near,
                           "share_of_later": (exact + near) / n_later if n_later else 0.0})  # fmt: skip
    return counts


def rows_to_drop(leaks: pd.DataFrame, images: pd.DataFrame) -> dict[str, list[int]]:
    """CSV line numbers per split whose image duplicates one of an earlier split (train first)."""
    leaked = images.loc[np.unique(leaks["later"].to_numpy(np.int64))]
    return {split: sorted(group["row"].astype(int)) for split, group in leaked.groupby("split")}


def judge_leakage(counts: list[dict], leaks: pd.DataFrame) -> Verdict:
    leaked = [c for c in counts if c["exact"] + c["near"]]
    if not leaked:
        return Verdict(PASS, "no image of a later split duplicates one of an earlier split")
    worst = max(leaked, key=lambda c: c["share_of_later"])
    total = leaks["later"].nunique()  # a test image in train and in valid is one leaked image, not two
    return Verdict(FAIL, f"{total} leaked image(s); worst {worst['earlier']} -> {worst['later']}: "
                         f"{worst['exact']} exact + {worst['near']} near ({worst['share_of_later']:.1%})")  # fmt: skip
