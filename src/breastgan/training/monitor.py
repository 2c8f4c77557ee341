"""Training health signals: the D(x) = D(G(z)) = 0.5 equilibrium of the GAN textbook, and NaN/Inf.

At equilibrium a discriminator that outputs probabilities gives about 0.5 to real and fake alike.
If D(x) -> 1 and D(G(z)) -> 0 for many steps, D wins outright and G gets no useful gradient; if
training runs on long after D gives random feedback, G may collapse. Both are worth a warning.
"""

from __future__ import annotations

import logging


class EquilibriumMonitor:
    def __init__(self, window: int, log: logging.Logger, win_margin: float = 0.05):
        self.window, self.log, self.margin = window, log, win_margin
        self.d_wins_for = 0
        self.warned_at: int | None = None

    def update(self, step: int, d_real: float, d_fake: float) -> str | None:
        if d_real > 1 - self.margin and d_fake < self.margin:
            self.d_wins_for += 1
        else:
            self.d_wins_for = 0
        if self.d_wins_for >= self.window and (self.warned_at is None or step - self.warned_at >= self.window):
            self.warned_at = step
            msg = (
                f"step {step}: the discriminator has won outright for {self.d_wins_for} steps "
                f"(D(x)={d_real:.3f}, D(G(z))={d_fake:.3f}); the generator gets little gradient. "
                "Consider label smoothing, augmentation, a lower D learning rate, or stopping."
            )
            self.log.warning(msg)
            return msg
        return None
