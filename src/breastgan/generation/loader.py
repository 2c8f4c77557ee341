"""Load a trained generator without running any code from the files it comes with.

Sources: a run directory (``generator.json`` + a checkpoint's safetensors), a single checkpoint
directory, or a run's snapshot set (the model-sharing study's snapshot ensemble: image i comes from
snapshot i mod S). The architecture is looked up by key in breastgan's registry and its arguments
are validated; weights load through safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file

from breastgan.generation.latents import latents_for
from breastgan.models.registry import GENERATORS, GeneratorBase


class GeneratorLoadError(ValueError):
    pass


class LoadedGenerator:
    """One or more generator weight sets (a snapshot ensemble) behind one ``sample`` call."""

    def __init__(self, models: list[GeneratorBase], meta: dict, sources: list[str], device: torch.device):
        self.models, self.meta, self.sources, self.device = models, meta, sources, device
        self.latent_dim = models[0].latent_dim
        self.num_classes = models[0].num_classes
        self.class_names: list[str] = list(meta.get("class_names") or [])
        self.image_size = tuple(models[0].image_size)
        self.channels = models[0].channels

    def _labels(self, labels, start: int, stop: int, drawn: torch.Tensor | None) -> torch.Tensor | None:
        if not self.num_classes:
            if labels is not None:
                raise ValueError("this generator is unconditional: do not pass labels")
            return None
        if labels is None:
            return drawn
        if isinstance(labels, (int, str)):
            labels = [labels] * (stop - start)
        else:
            labels = list(labels)[start:stop] if len(labels) > stop - start else list(labels)
        out = []
        for lab in labels:
            if isinstance(lab, str):
                if lab not in self.class_names:
                    raise ValueError(f"unknown label {lab!r}; this generator knows {self.class_names}")
                lab = self.class_names.index(lab)
            if not 0 <= int(lab) < self.num_classes:
                raise ValueError(f"label {lab} out of range 0..{self.num_classes - 1}")
            out.append(int(lab))
        return torch.tensor(out, dtype=torch.long)

    @torch.no_grad()
    def sample_range(self, start: int, stop: int, seed: int = 0, labels=None, batch_size: int = 64) -> torch.Tensor:
        """Images with global indices [start, stop) for ``seed``; (N, C, H, W) float32 in [0, 1]."""
        chunks = []
        for a in range(start, stop, batch_size):
            b = min(stop, a + batch_size)
            z, drawn = latents_for(a, b, self.latent_dim, seed, self.num_classes)
            y = self._labels(labels, a - start, b - start, drawn) if labels is not None else self._labels(None, a, b, drawn)
            out = torch.empty(b - a, self.channels, *self.image_size)
            owner = torch.arange(a, b) % len(self.models)  # snapshot ensemble: image i from snapshot i mod S
            for k, model in enumerate(self.models):
                sel = (owner == k).nonzero().flatten()
                if sel.numel() == 0:
                    continue
                yy = y[sel].to(self.device) if y is not None else None
                img = model(z[sel].to(self.device), yy).float()
                out[sel] = ((img.clamp(-1, 1) + 1) / 2).cpu()
            chunks.append(out)
        return torch.cat(chunks)

    def sample(self, n: int, seed: int = 0, labels=None, batch_size: int = 64) -> torch.Tensor:
        """``n`` images for ``seed`` (the same seed always gives the same images).

        ``labels``: None (drawn uniformly for conditional models), one label (index or class name)
        for all, or a sequence of n labels.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return self.sample_range(0, n, seed, labels, batch_size)

    def save(self, out_dir: str | Path, n: int, seed: int = 0, labels=None, fmt: str = "png", bit_depth: int = 16, batch_size: int = 64):
        from breastgan.generation.writer import write_images

        return write_images(self, out_dir, n=n, seed=seed, labels=labels, fmt=fmt, bit_depth=bit_depth, batch_size=batch_size)


def _read_generator_meta(run: Path) -> dict:
    f = run / "generator.json"
    if not f.is_file():
        raise GeneratorLoadError(f"{run}: no generator.json; not a breastgan run directory")
    meta = json.loads(f.read_text())
    if meta.get("format") != "breastgan-generator/1":
        raise GeneratorLoadError(f"{f}: unsupported format {meta.get('format')!r}; expected 'breastgan-generator/1'")
    return meta


def _instantiate(meta: dict, weights: Path, device: torch.device) -> GeneratorBase:
    arch = meta["arch"]
    if arch not in GENERATORS:
        raise GeneratorLoadError(f"{weights}: unknown generator architecture {arch!r}; available {GENERATORS.names()}")
    args = GENERATORS.entry(arch).validate_args(meta["args"], "generator.args").model_dump()
    model = GENERATORS.get(arch)(**args)
    tensors = load_file(str(weights))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise GeneratorLoadError(f"{weights}: tensors do not match {arch!r} (missing {missing[:4]}, unexpected {extra[:4]})")
    for k, t in tensors.items():
        if t.shape != expected[k].shape:
            raise GeneratorLoadError(f"{weights}: tensor {k!r} has shape {tuple(t.shape)}, the architecture expects {tuple(expected[k].shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise GeneratorLoadError(f"{weights}: tensor {k!r} holds NaN/Inf")
    model.load_state_dict(tensors)
    return model.to(device).eval()


def _checkpoint_dir(run: Path, checkpoint: str | int) -> Path:
    from breastgan.training.checkpoint import CheckpointManager

    mgr = CheckpointManager(run, keep_last=1)
    items = mgr.list()
    if not items:
        raise GeneratorLoadError(f"{run}: no checkpoints in {run / 'checkpoints'}")
    if checkpoint == "latest":
        return items[-1].path
    if checkpoint == "best":
        best = mgr.best_step()
        if best is None:
            raise GeneratorLoadError(f"{run}: no best checkpoint recorded (set train.eval and train.best_metric)")
        checkpoint = best
    for info in items:
        if info.step == int(checkpoint):
            return info.path
    raise GeneratorLoadError(f"{run}: no checkpoint for step {checkpoint}; available steps {[i.step for i in items]}")


def load_generator(
    source: str | Path,
    *,
    checkpoint: str | int = "latest",
    ema: bool = True,
    snapshots: str | Sequence[int] | None = None,
    device: str | torch.device = "cpu",
) -> LoadedGenerator:
    """Load a generator from a run directory (or an exported generator package when supported).

    ``checkpoint``: 'latest', 'best' or a step number. ``ema``: use the EMA weights (default).
    ``snapshots``: 'all' or a list of epochs to sample from the run's snapshot set instead.
    """
    src = Path(source)
    device = torch.device(device)
    if (src / "manifest.json").is_file():
        from breastgan.sharing import load_package  # generator packages (sharing issue)

        return load_package(src, device=device)
    if (src / "meta.json").is_file() and (src / "generator_ema.safetensors").is_file():
        run, ckpt_dir = src.parent.parent, src  # a checkpoint directory inside a run
    else:
        run, ckpt_dir = src, None
    meta = _read_generator_meta(run)
    if snapshots is not None:
        snap_dir = run / "snapshots"
        files = sorted(snap_dir.glob("epoch_*.safetensors"))
        if snapshots != "all":
            wanted = {int(e) for e in snapshots}
            files = [f for f in files if int(f.stem.split("_")[1]) in wanted]
            found = {int(f.stem.split("_")[1]) for f in files}
            if wanted - found:
                raise GeneratorLoadError(f"{run}: no snapshot for epoch(s) {sorted(wanted - found)}")
        if not files:
            raise GeneratorLoadError(f"{run}: no snapshots in {snap_dir} (set train.snapshot_every_epochs)")
        models = [_instantiate(meta, f, device) for f in files]
        return LoadedGenerator(models, meta, [str(f) for f in files], device)
    ckpt_dir = ckpt_dir or _checkpoint_dir(run, checkpoint)
    weights = ckpt_dir / ("generator_ema.safetensors" if ema else "generator.safetensors")
    return LoadedGenerator([_instantiate(meta, weights, device)], meta, [str(weights)], device)
