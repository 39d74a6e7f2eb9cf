"""Accuracy of integer embeddings against FP32: cosine and nearest-neighbour agreement."""

from __future__ import annotations

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-300)


def nearest_neighbours(e: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row."""
    e = np.asarray(e, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-300)
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return s.argmax(1)


def compare(emb: np.ndarray, ref: np.ndarray) -> dict:
    """Mean and min cosine to the reference, and nearest-neighbour agreement (None below 3 rows)."""
    cos = cosine_rows(emb, ref)
    nn = float((nearest_neighbours(emb) == nearest_neighbours(ref)).mean()) if len(ref) >= 3 else None
    return {"sentences": int(len(ref)), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "nn_agreement": nn}
