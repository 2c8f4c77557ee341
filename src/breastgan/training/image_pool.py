"""The history buffer of generated images (Shrivastava et al. 2017) with the CycleGAN reference's semantics.

Per image (``util/image_pool.py``): while the buffer holds fewer than ``size`` images, store the
new image and return it; afterwards, with probability ``p_stored`` (reference: 0.5) return a
uniformly chosen stored image and put the new one in its place, else return the new image. Size
0 disables the buffer.

Randomness comes from the caller as uniform draws, two per image (the choice and the slot), drawn
whether used or not: the number of draws per step is then fixed, which keeps the step's random
stream - and so kill-and-resume - exact. The buffer's images are part of the checkpoint
(:meth:`state_dict`).
"""

from __future__ import annotations

from typing import Any

import torch


class ImagePool:
    DRAWS_PER_IMAGE = 2

    def __init__(self, size: int = 50, p_stored: float = 0.5):
        if size < 0:
            raise ValueError(f"image pool size must be >= 0, got {size}")
        if not 0 <= p_stored <= 1:
            raise ValueError(f"image pool p_stored must be in [0, 1], got {p_stored}")
        self.size, self.p_stored = size, p_stored
        self.images: list[torch.Tensor] = []
        self.last_from_pool = 0  # images the last query returned from the buffer (logged)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """The images the discriminator sees in place of ``images`` (N, C, H, W); ``draws``: (N, 2) uniform [0, 1)."""
        if draws.shape != (images.shape[0], self.DRAWS_PER_IMAGE):
            raise ValueError(f"image pool: expected draws of shape ({images.shape[0]}, 2), got {tuple(draws.shape)}")
        self.last_from_pool = 0
        if self.size == 0:
            return images
        out = []
        for img, (u_choice, u_slot) in zip(images.detach(), draws.tolist()):
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif u_choice < self.p_stored:
                slot = min(int(u_slot * self.size), self.size - 1)
                out.append(self.images[slot].clone())
                self.images[slot] = img.clone()
                self.last_from_pool += 1
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        stacked = torch.stack(self.images).cpu() if self.images else torch.zeros(0)
        return {"size": self.size, "images": stacked}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"image pool: the checkpoint's buffer has size {state['size']}, this run's is {self.size}")
        imgs = state["images"]
        self.images = [im.to(device) for im in imgs] if imgs.numel() else []
