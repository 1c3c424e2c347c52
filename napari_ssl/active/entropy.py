"""The voxel uncertainty a Prediction carries: entropy of the class probabilities, normalised to [0, 1]."""
from __future__ import annotations

import numpy as np


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """-sum p log p over the class axis (axis 0) divided by log K: 0 = certain, 1 = uniform."""
    k = probs.shape[0]
    return -(probs * np.log(np.clip(probs, 1e-8, 1.0))).sum(0) / np.log(k)
