"""Statistics over seeds and samples shared by the bandit studies and `alignkit compare` (NumPy, no torch)."""

from __future__ import annotations

from typing import Any

import numpy as np


def mean_se(values: Any) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for one value), in float64, of a 1-D sequence or tensor."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
    return float(x.mean()), se
