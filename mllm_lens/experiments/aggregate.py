"""The paper's dataset-level numbers from a run's table: mean indirect effect per layer and
token role (with a 95 % confidence band), and constraint flow vs confidence as error predictors."""

from __future__ import annotations

from typing import Any

import numpy as np

from mllm_lens.experiments.compute import ROLES
from mllm_lens.tracing.flow import auroc

#: z of a two-sided 95 % normal interval.
Z95 = 1.959963984540054


def _has(table, *columns: str) -> bool:
    return not table.empty and all(c in table.columns for c in columns)


def _trace_rows(table, site: str, window: int | None):
    if not _has(table, "site", "window", "scores"):
        return table.iloc[0:0]
    rows = table[(table["analysis"] == "trace") & (table["status"] == "ok") & (table["site"] == site)]
    if window is not None:
        rows = rows[rows["window"] == window]
    return rows


def role_effects(row: Any, effect: str = "indirect") -> dict[str, np.ndarray]:
    """``{role: [layers]}``: one trace row's effect averaged over the positions of each role."""
    scores = np.asarray(row["scores"], dtype=np.float64).reshape(int(row["n_layers"]), int(row["n_positions"]))
    if effect == "indirect":
        values = scores - row["corrupted_prob"]
    elif effect == "normalized":
        gap = row["clean_prob"] - row["corrupted_prob"]
        values = (scores - row["corrupted_prob"]) / gap if gap > 0 else np.full_like(scores, np.nan)
    elif effect == "score":
        values = scores
    else:
        raise ValueError(f"effect must be 'indirect', 'normalized' or 'score', got {effect!r}")
    roles = np.asarray(row["roles"])
    return {role: np.nanmean(values[:, roles == role], axis=1) for role in ROLES if (roles == role).any()}


def role_profiles(table, site: str = "mlp", window: int | None = None, effect: str = "indirect") -> dict[str, dict]:
    """Per role: ``mean``, ``lo``, ``hi`` (95 % confidence band of the mean) ``[layers]`` and ``n``
    examples, over the run's successful traces of ``site`` (and ``window``)."""
    rows = _trace_rows(table, site, window)
    if window is None and not rows.empty and rows["window"].nunique() > 1:
        raise ValueError(f"the run traced windows {sorted(rows['window'].unique())}: pick one with window=")
    curves: dict[str, list[np.ndarray]] = {}
    for _, row in rows.iterrows():
        for role, curve in role_effects(row, effect).items():
            curves.setdefault(role, []).append(curve)
    out = {}
    for role in ROLES:
        if role not in curves:
            continue
        stack = np.stack(curves[role])
        n = np.sum(~np.isnan(stack), axis=0)
        mean = np.nanmean(stack, axis=0)
        half = Z95 * np.nanstd(stack, axis=0, ddof=1) / np.sqrt(np.maximum(n, 1)) if len(stack) > 1 else 0 * mean
        out[role] = {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(stack)}
    return out


def peak_layer(profiles: dict[str, dict], role: str = "visual") -> int:
    """The layer where ``role``'s mean effect is largest."""
    return int(np.nanargmax(profiles[role]["mean"]))


def flow_table(table) -> dict[str, Any]:
    """AUROC of constraint flow per layer (and of the model's confidence) for predicting a
    correct answer, over the run's flow rows with a known correctness."""
    rows = (
        table[(table["analysis"] == "flow") & (table["status"] == "ok")] if _has(table, "correct") else table.iloc[0:0]
    )
    rows = rows[rows["correct"].notna()] if not rows.empty else rows
    if rows.empty:
        return {"n": 0, "n_correct": 0, "layer_auroc": [], "confidence_auroc": float("nan")}
    flows = np.stack([np.asarray(s, dtype=np.float64) for s in rows["scores"]])
    correct = rows["correct"].astype(bool).to_numpy()
    both = 0 < correct.sum() < len(correct)  # AUROC needs correct and wrong answers

    def score(values: np.ndarray) -> float:
        return auroc(values, correct) if both else float("nan")

    return {
        "n": len(rows),
        "n_correct": int(correct.sum()),
        "layer_auroc": [score(flows[:, i]) for i in range(flows.shape[1])],
        "confidence_auroc": score(rows["confidence"].to_numpy(dtype=np.float64)),
    }


def patch_grid(table) -> dict[str, Any] | None:
    """Mean per-patch restoration effect over the run's patch sweeps, ``[layers, rows, cols]``
    (None without patch rows; examples whose grids differ from the first are left out)."""
    if not _has(table, "grid_rows", "grid_cols"):
        return None
    rows = table[(table["analysis"] == "patches") & (table["status"] == "ok")]
    if rows.empty:
        return None
    shape = tuple(int(rows.iloc[0][k]) for k in ("n_layers", "grid_rows", "grid_cols"))
    grids = [
        np.asarray(r["scores"], dtype=np.float64).reshape(shape)
        for _, r in rows.iterrows()
        if (int(r["n_layers"]), int(r["grid_rows"]), int(r["grid_cols"])) == shape
    ]
    return {"mean": np.mean(grids, axis=0), "n": len(grids)}
