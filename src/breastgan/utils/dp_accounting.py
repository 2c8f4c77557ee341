"""Privacy accounting shared by training (the DP discriminator phase) and sharing (the manifest record).

Lives outside both so that a package can state a checkpoint's guarantee without importing training.
"""

from __future__ import annotations

from typing import Any


def make_accountant(kind: str) -> Any:
    from opacus.accountants import create_accountant

    return create_accountant(kind)


def epsilon_of(history: list, delta: float, kind: str) -> float:
    """Epsilon of an Opacus accountant history [(noise_multiplier, sample_rate, steps), ...] at ``delta``."""
    if not history:
        return 0.0
    acc = make_accountant(kind)
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta=delta))


def guarantee_from_state(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's ``differential_privacy`` record from a checkpoint's saved DP state (None: not a DP run)."""
    if not state:
        return None
    history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
    eps = epsilon_of(history, float(state["delta"]), state["accountant"])
    return {"epsilon": eps, "delta": float(state["delta"]), "unit": state["unit"],
            "n_units": int(state["n_units"]), "noise_multiplier": float(state["noise_multiplier"]),
            "max_grad_norm": float(state["max_grad_norm"]), "sample_rate": float(state["sample_rate"]),
            "steps": int(sum(h[2] for h in history)), "accountant": state["accountant"]}
