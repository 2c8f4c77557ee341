"""The coordinator's half of the split backward: weight the sites' image gradients and back-propagate them.

With L_G = sum_j pi_j * g_loss_j(D_j(fake_j)), the chain rule gives dL_G/dtheta =
sum_j (pi_j * d g_loss_j / d fake_j) . d fake_j / dtheta: the sites return d g_loss_j / d fake_j
(:func:`~breastgan.training.sites.discriminator.site_update`), the coordinator scales each by pi_j and
runs ONE backward over all fakes (a single traversal of the generator's graph, which may be shared
by the fakes, rather than N).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch


def weighted_backward(fakes: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], weights: Sequence[float]) -> None:
    """``torch.autograd.backward(fakes, [w_j * grad_j])``: accumulate sum_j w_j * d g_loss_j / d theta into .grad."""
    if not (len(fakes) == len(grads) == len(weights)) or not fakes:
        raise ValueError(f"weighted_backward: need as many fakes, grads and weights (at least one), "
                         f"got {len(fakes)}, {len(grads)}, {len(weights)}")
    scaled = []
    for j, (fake, grad, w) in enumerate(zip(fakes, grads, weights)):
        if grad.shape != fake.shape:
            raise ValueError(f"weighted_backward: gradient {j} has shape {tuple(grad.shape)}, its fakes {tuple(fake.shape)}")
        if not fake.requires_grad:
            raise ValueError(f"weighted_backward: fakes {j} do not require grad (pass the generator's output, not a detached copy)")
        scaled.append(grad.to(device=fake.device, dtype=fake.dtype) * float(w))
    torch.autograd.backward(list(fakes), scaled)


def renormalise(pi: Mapping[int, float], answered: set[int]) -> dict[int, float]:
    """pi restricted to the sites that answered, rescaled to sum 1 (asynchronous mode)."""
    if not answered:
        raise ValueError("renormalise: no site answered this step; nothing to weight (check the sites or the deadline)")
    unknown = sorted(answered - set(pi))
    if unknown:
        raise ValueError(f"renormalise: sites {unknown} answered but have no weight; known sites {sorted(pi)}")
    total = sum(pi[j] for j in answered)
    if total <= 0:
        raise ValueError(f"renormalise: the answering sites {sorted(answered)} have total weight {total}; expected > 0")
    return {j: pi[j] / total for j in sorted(answered)}
