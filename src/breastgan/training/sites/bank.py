"""dm-GAN's N site discriminators on one machine, run as one module.

:class:`DiscriminatorBank` holds N independent PatchGANs (``discriminators``, an ``nn.ModuleList``:
the checkpoint's tensor names are ``discriminators.<j>.model.<i>.weight`` whatever the mode) and
scores x (N, b, C, H, W), D_j scoring x[j], in one of three exact ways (:data:`BANK_MODES`):

- ``loop``: a Python loop over the N discriminators (the reference).
- ``grouped``: one grouped convolution per layer, the N discriminators' weights concatenated in the
  forward (differentiably, so each D_j's parameters get their own gradients) and the input laid out
  as (b, N*C, H, W). Instance norm over N*C channels normalises each discriminator's channels on their
  own, so it is exact. Batch norm's forward statistics would be exact too, but its running-stat
  buffers would be updated on the concatenated copy and not carried back: a batch-norm PatchGAN
  falls back to ``loop`` (logged; :attr:`DiscriminatorBank.mode` says which mode runs).
- ``vmap``: ``torch.func.functional_call`` under ``torch.vmap``, the parameters ``torch.stack``-ed in
  the forward. Same batch-norm fallback (in-place running-stat updates under vmap).

``auto`` picks the mode ``benchmarks/bench_dmgan_discriminators.py`` measured fastest on CPU for the
default PatchGAN (docs/benchmarks.md, "dm-GAN site discriminators"): ``loop``. On a 2-core Xeon, one
thread, ndf 64, grouped/vmap took 1.1-2.2x the loop's time at 64x64 (N 10, batch 1: loop 482 ms,
grouped 1080, vmap 1070) and 1.3-1.6x at 256x256 (N 10, batch 4: 15.5 s, 25.3 s, 23.6 s): oneDNN's
grouped convolutions are slower than N dense ones at these widths. A GPU may well rank them the
other way (unmeasured); ask for ``grouped`` or ``vmap`` explicitly there.

:meth:`DiscriminatorBank.update` is N calls of :func:`~breastgan.training.sites.discriminator.site_update`
at once. It uses ONE optimiser over all N discriminators' parameters and back-propagates the SUM of
the N discriminator losses: D_j's parameters only appear in d_loss_j, so each gets exactly the
gradient of its own loss, and Adam (like SGD, weight decay and momentum) acts elementwise, so one Adam
over the union equals N independent Adams. A MEAN over j would scale every gradient by 1/N, which
Adam only approximately ignores (eps), and optimisers with a global norm (LAMB, gradient clipping by
total norm) would couple the sites: neither is used here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from breastgan.losses.adversarial import AdversarialLoss
from breastgan.models.registry import DISCRIMINATORS
from breastgan.registry import Registry
from breastgan.training.sites.discriminator import check_site_loss, frozen, real_targets_like

LOG = logging.getLogger("breastgan")

#: the mode ``auto`` resolves to (the fastest on CPU in the benchmark; see the module docstring)
AUTO_MODE = "loop"


@dataclass(frozen=True)
class BankMode:
    """How a bank scores its N inputs. ``unsupported`` says why a bank cannot run this way (None: it can)."""

    forward: Callable[["DiscriminatorBank", torch.Tensor], torch.Tensor]
    unsupported: Callable[["DiscriminatorBank"], str | None]


BANK_MODES: Registry[BankMode] = Registry("discriminator bank mode")


def _always(bank: "DiscriminatorBank") -> str | None:
    return None


def _no_batch_norm(bank: "DiscriminatorBank") -> str | None:
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in bank.discriminators.modules()):
        return "batch norm keeps running statistics that this mode would update on a copy"
    return None


def _loop_forward(bank: "DiscriminatorBank", x: torch.Tensor) -> torch.Tensor:
    return torch.stack([D(x[j]) for j, D in enumerate(bank.discriminators)])


_GROUPED_LAYERS = (nn.Conv2d, nn.InstanceNorm2d, nn.LeakyReLU, nn.Identity)


def _grouped_unsupported(bank: "DiscriminatorBank") -> str | None:
    reason = _no_batch_norm(bank)
    if reason:
        return reason
    odd = {type(m).__name__ for m in bank.discriminators[0].model if not isinstance(m, _GROUPED_LAYERS)}
    if odd:
        return f"layers {sorted(odd)} have no grouped form here"
    if any(m.groups != 1 for m in bank.discriminators[0].model if isinstance(m, nn.Conv2d)):
        return "convolutions are already grouped"
    return None


def _cat(layers: list[nn.Module], name: str) -> torch.Tensor | None:
    first = getattr(layers[0], name)
    return None if first is None else torch.cat([getattr(m, name) for m in layers])


def _grouped_forward(bank: "DiscriminatorBank", x: torch.Tensor) -> torch.Tensor:
    n, b, c, h, w = x.shape
    y = x.transpose(0, 1).reshape(b, n * c, h, w)  # channel j*C + c is D_j's input channel c
    for i, layer in enumerate(bank.discriminators[0].model):
        if isinstance(layer, nn.Conv2d):
            same = [D.model[i] for D in bank.discriminators]
            y = F.conv2d(y, _cat(same, "weight"), _cat(same, "bias"), layer.stride, layer.padding, layer.dilation, groups=n)
        elif isinstance(layer, nn.InstanceNorm2d):
            # per-sample, per-channel statistics: each discriminator's channels are normalised on their own
            same = [D.model[i] for D in bank.discriminators]
            weight, bias = (_cat(same, "weight"), _cat(same, "bias")) if layer.affine else (None, None)
            y = F.instance_norm(y, weight=weight, bias=bias, eps=layer.eps)
        elif isinstance(layer, nn.LeakyReLU):
            y = F.leaky_relu(y, layer.negative_slope)
    return y.reshape(b, n, -1, *y.shape[-2:]).transpose(0, 1)


def _vmap_forward(bank: "DiscriminatorBank", x: torch.Tensor) -> torch.Tensor:
    template = bank.discriminators[0]
    names = [name for name, _ in template.named_parameters()]
    per_d = [dict(D.named_parameters()) for D in bank.discriminators]
    stacked = {name: torch.stack([p[name] for p in per_d]) for name in names}

    def one(params: dict[str, torch.Tensor], xj: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(template, params, (xj,))

    return torch.vmap(one)(stacked, x)


BANK_MODES.register("loop", summary="a Python loop over the N discriminators")(BankMode(_loop_forward, _always))
BANK_MODES.register("grouped", summary="one grouped convolution per layer over the concatenated weights")(
    BankMode(_grouped_forward, _grouped_unsupported))
BANK_MODES.register("vmap", summary="torch.func.functional_call under torch.vmap over stacked parameters")(
    BankMode(_vmap_forward, _no_batch_norm))


class DiscriminatorBank(nn.Module):
    """N independent PatchGANs scoring (N, b, C, H, W) -> (N, b, 1, h', w'); D_j sees only x[j].

    ``patchgan_args`` are the ``patchgan`` discriminator's options (validated like a config's).
    Initialisation is PyTorch's default; recipes apply their own (e.g. ``bank.apply(init_normal)``).
    """

    def __init__(self, n: int, patchgan_args: dict[str, Any] | None = None, mode: str = "auto"):
        super().__init__()
        if n < 1:
            raise ValueError(f"DiscriminatorBank: n must be >= 1 discriminators, got {n}")
        self.discriminators = nn.ModuleList([DISCRIMINATORS.build("patchgan", dict(patchgan_args or {})) for _ in range(n)])
        self.requested_mode = mode
        name = AUTO_MODE if mode == "auto" else mode
        reason = BANK_MODES.get(name).unsupported(self)  # unknown names raise with the list of modes
        if reason:
            LOG.warning("DiscriminatorBank: mode %r cannot run this PatchGAN (%s); using 'loop'", name, reason)
            name = "loop"
        self.mode = name
        self._forward = BANK_MODES.get(name).forward

    def __len__(self) -> int:
        return len(self.discriminators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[0] != len(self):
            raise ValueError(f"DiscriminatorBank: input must be (N={len(self)}, b, C, H, W), got {tuple(x.shape)}")
        return self._forward(self, x)

    def update(self, opt: torch.optim.Optimizer, loss: AdversarialLoss, real: torch.Tensor, fake: torch.Tensor,
               *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What N calls of ``site_update(D_j, ., loss, real[j], fake[j])`` do, at once.

        ``opt`` optimises all N discriminators' parameters. Returns (d_losses (N,), g_losses (N,),
        grads (N, b, C, H, W)) with grads[j] = d g_loss_j / d fake[j] under the updated D_j.
        ``generator`` draws label-smoothed real targets, D_0's first as N site updates would.
        """
        check_site_loss(loss)
        if real.shape[0] != len(self) or fake.shape[0] != len(self):
            raise ValueError(f"DiscriminatorBank.update: real and fake must be (N={len(self)}, b, C, H, W), "
                             f"got {tuple(real.shape)} and {tuple(fake.shape)}")
        fake = fake.detach()
        opt.zero_grad(set_to_none=True)
        d_real, d_fake = self(real).float(), self(fake).float()
        d_losses = torch.stack([loss.discriminator_loss(d_real[j], d_fake[j], real_targets_like(loss, d_real[j], generator))
                                for j in range(len(self))])
        d_losses.sum().backward()  # the SUM: each D_j gets exactly its own loss's gradient (module docstring)
        opt.step()
        with frozen(self):
            leaf = fake.clone().requires_grad_(True)
            scores = self(leaf).float()
            g_losses = torch.stack([loss.generator_loss(scores[j]) for j in range(len(self))])
            # g_loss_j depends on leaf[j] only, so the gradient of the sum is, slice by slice, each site's own
            (grads,) = torch.autograd.grad(g_losses.sum(), leaf)
        return d_losses.detach(), g_losses.detach(), grads
