"""Binary classification metrics from a classifier's log-probabilities.

The published code of the model-sharing study computed AUROC/AUPRC from raw logits read as
log-probabilities (methods.md section 4, pitfall 5). Here every classifier returns
log-softmax output, :func:`probabilities` checks that contract (each row must exponentiate to a
distribution, so raw logits are refused rather than silently misread) and the ranking metrics
score the positive-class softmax probability. AUROC and AUPRC are computed here, not by calling
scikit-learn, so the tests can compare the two implementations.
"""

from __future__ import annotations

import numpy as np
import torch

METRIC_NAMES = ("accuracy", "f1", "auroc", "auprc")


def probabilities(log_probs: torch.Tensor, atol: float = 1e-3) -> torch.Tensor:
    """(N, C) log-probabilities -> (N, C) probabilities; raises when the rows are not log-softmax output."""
    if log_probs.ndim != 2:
        raise ValueError(f"expected (N, C) log-probabilities, got shape {tuple(log_probs.shape)}")
    if not torch.isfinite(log_probs).all():
        raise ValueError("classifier output holds NaN/Inf")
    p = log_probs.double().exp()
    worst = float((p.sum(dim=1) - 1).abs().max()) if len(p) else 0.0
    if worst > atol:
        raise ValueError(
            f"classifier output is not log-softmax (rows of exp(output) sum to 1 +- {worst:.3g}); "
            "a classifier must end in log_softmax so that metrics use softmax probabilities, not raw logits"
        )
    return (p / p.sum(dim=1, keepdim=True)).float()


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN with a single class."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # mid-ranks for tied scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUPRC as average precision: sum over thresholds of (R_k - R_{k-1}) * P_k (scikit-learn's definition)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # one threshold per distinct score: the last index of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metrics(log_probs: torch.Tensor, labels: torch.Tensor, positive: int = 1) -> dict[str, float]:
    """accuracy and F1 (positive class) at the argmax decision; AUROC and AUPRC of the positive-class softmax probability."""
    p = probabilities(log_probs)
    if p.shape[1] != 2:
        raise ValueError(f"binary metrics need 2 classes, got {p.shape[1]}")
    y = labels.cpu().numpy().astype(int)
    pred = p.argmax(dim=1).cpu().numpy()
    score = p[:, positive].cpu().numpy()
    pos = y == positive
    tp = int(np.sum(pos & (pred == positive)))
    fp = int(np.sum(~pos & (pred == positive)))
    fn = int(np.sum(pos & (pred != positive)))
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    return {
        "accuracy": float(np.mean(pred == y)) if len(y) else float("nan"),
        "f1": float(f1),
        "auroc": auroc(pos, score),
        "auprc": average_precision(pos, score),
    }
