"""Names of the variants of the shared RL math, as configs spell them; the math dispatches on them in rl.py.

Config-only: configs (alignkit/algorithms/configs/) import these Literals without importing torch; rl.py
holds one `{name: fn}` table per Literal (KL_ESTIMATORS, AGGREGATIONS), and the tests hold them equal.
"""

from __future__ import annotations

from typing import Literal

KLKind = Literal["k1", "k2", "k3"]
Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
GroupScale = Literal["std", "none"]
RatioLevel = Literal["token", "sequence"]
