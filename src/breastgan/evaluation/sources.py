"""Image sources for evaluation: tensors, folders, datasets and generators behind one interface.

A source yields (B, 1, H, W) float32 batches in [0, 1] and has a content fingerprint, so that cached
real-set statistics are reused only for exactly the same images. This is the I/O edge of the
evaluation package; every metric below it is a pure function on tensors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from breastgan.data.base import hash_tensor
from breastgan.data.io import IMAGE_SUFFIXES, read_image


@dataclass
class ImageSource:
    """``n`` images from somewhere, read in batches; ``describe()`` says where they came from."""

    kind: str
    location: str
    n: int
    _read: Callable[[int, int], torch.Tensor]  # (start, stop) -> (stop - start, 1, H, W)
    _fingerprint: Callable[[], str]
    info: dict[str, Any] = field(default_factory=dict)
    _fp_cache: str | None = None
    # what reading changed about the stored pixels (filled as files are read): {"rgb_to_grey": [files], "bit_depths": {8: k, 16: m}}
    conversions: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.n, batch_size):
            yield self._read(start, min(self.n, start + batch_size))

    def load(self) -> torch.Tensor:
        """All images at once: for pixel metrics that need random access (bounded by ``n``)."""
        return self._read(0, self.n)

    def fingerprint(self) -> str:
        if self._fp_cache is None:
            self._fp_cache = self._fingerprint()
        return self._fp_cache

    def describe(self) -> dict[str, Any]:
        d = {"kind": self.kind, "location": self.location, "n": self.n, **self.info}
        if self.conversions:
            d["conversions"] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in self.conversions.items()}
        return d

    def conversion_warnings(self, role: str) -> list[str]:
        """One line per silent-looking conversion reading made, naming the folder (and up to 3 files)."""
        out = []
        rgb = sorted(self.conversions.get("rgb_to_grey", ()))
        if rgb:
            shown = ", ".join(rgb[:3]) + (f" and {len(rgb) - 3} more" if len(rgb) > 3 else "")
            out.append(f"{role} images {self.location}: {len(rgb)} RGB file(s) converted to grey with BT.601 luma weights ({shown})")
        depths = self.conversions.get("bit_depths", {})
        if len(depths) > 1:
            counts = ", ".join(f"{k}-bit: {v}" for k, v in sorted(depths.items()))
            out.append(f"{role} images {self.location}: mixed bit depths ({counts}), all scaled to [0, 1] by their own maximum "
                       "(2^bits - 1); an 8-bit and a 16-bit file of one scene differ by quantisation only if both used the full range")
        return out


def _check_images(x: torch.Tensor, where: str) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{where}: expected (N, 1, H, W) grey images, got shape {tuple(x.shape)}")
    x = x.float()
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{where}: pixel values must lie in [0, 1] (got {lo:.4g}..{hi:.4g}); map [-1, 1] outputs with (x + 1) / 2")
    return x.clamp(0, 1)


def from_tensor(images: torch.Tensor, n: int | None = None, name: str = "tensor") -> ImageSource:
    images = _check_images(images.detach().cpu(), name)
    images = images[: n or images.shape[0]]
    return ImageSource("tensor", name, images.shape[0], lambda a, b: images[a:b], lambda: hash_tensor(images).hexdigest())


def list_image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def from_folder(folder: str | Path, n: int | None = None, seed: int = 0) -> ImageSource:
    """Images in ``folder`` (recursively). With ``n`` smaller than the count, a seeded random subset."""
    folder = Path(folder)
    files = list_image_files(folder)
    if n is not None and n < len(files):
        g = torch.Generator().manual_seed(seed)
        files = [files[int(i)] for i in torch.randperm(len(files), generator=g)[:n].sort().values]
    bit_depths: set[int] = set()
    rgb_files: set[str] = set()
    depth_files: dict[int, set[str]] = {}

    def read(a: int, b: int) -> torch.Tensor:
        out = []
        for p in files[a:b]:
            img = read_image(p)
            bit_depths.add(img.bit_depth)
            rel = str(p.relative_to(folder))
            depth_files.setdefault(img.bit_depth, set()).add(rel)
            if img.converted_from_rgb:
                rgb_files.add(rel)
            src.conversions["bit_depths"] = {k: len(v) for k, v in sorted(depth_files.items())}
            if rgb_files:
                src.conversions["rgb_to_grey"] = rgb_files
            out.append(torch.from_numpy(img.pixels)[None])
        shapes = {tuple(t.shape) for t in out}
        if len(shapes) > 1:
            raise ValueError(f"{folder}: images have different sizes {sorted(shapes)}; resize them to one size first")
        return torch.stack(out)

    def fingerprint() -> str:
        h = hashlib.sha256(b"folder-v1")
        for p in files:
            h.update(str(p.relative_to(folder)).encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
        return h.hexdigest()

    src = ImageSource("folder", str(folder), len(files), read, fingerprint, {"bit_depths_seen": bit_depths})
    return src


def from_dataset(dataset: Any, n: int | None = None, seed: int = 0, name: str | None = None) -> ImageSource:
    """Any object with the dataset contract: ``len``, ``ds[i] -> ((1, H, W) [0, 1], label)``, ``fingerprint()``."""
    total = len(dataset)
    if n is not None and n < total:
        g = torch.Generator().manual_seed(seed)
        index = torch.randperm(total, generator=g)[:n].sort().values.tolist()
    else:
        index = list(range(total))
    label = name or getattr(getattr(dataset, "info", None), "name", type(dataset).__name__)

    def read(a: int, b: int) -> torch.Tensor:
        return _check_images(torch.stack([dataset[i][0] for i in index[a:b]]), str(label))

    def fingerprint() -> str:
        h = hashlib.sha256(str(dataset.fingerprint()).encode())
        h.update(str(index if len(index) < total else "all").encode())
        return h.hexdigest()

    return ImageSource("dataset", str(label), len(index), read, fingerprint)


def from_generator(generator: Any, n: int | None, seed: int = 0, name: str = "generator", labels: Any = None) -> ImageSource:
    """Images from a generator: any loaded breastgan kind, or an object with ``sample(n, seed=..., labels=...)``.

    A breastgan kind is read with ``synthesize_range`` (image i depends only on (seed, i), whatever the
    batch size; the images ``breastgan generate --seed`` writes), labels through a noise generator's
    ``sample_range``; ``n`` must fit its ``capacity`` (a translator makes the translations of the images
    bound to it, an inversion its reconstructions). Any other object is sampled per batch, batch k with
    seed ``seed + k``.
    """
    if n is None:
        raise ValueError(f"{name}: sampling from a generator needs a sample count n")
    kind = getattr(generator, "kind", None)
    if hasattr(generator, "synthesize_range"):
        cap = generator.capacity
        if cap is not None and n > cap:
            hint = (" (a translation model makes images from input images: bind them first, gen.bind(images))" if cap == 0
                    else "; ask for fewer")
            raise ValueError(f"{name}: this {kind} model can make {cap} images, {n} were asked for{hint}")
        if labels is not None and kind != "noise":
            raise ValueError(f"{name}: labels apply to noise generators; this is a {kind} model")

        def read(a: int, b: int) -> torch.Tensor:
            x = generator.sample_range(a, b, seed=seed, labels=labels) if labels is not None else generator.synthesize_range(a, b, seed=seed)
            return _check_images(x.detach().cpu(), name)
    else:
        def read(a: int, b: int) -> torch.Tensor:
            x = generator.sample(b - a, seed=seed + a, labels=labels)
            return _check_images(torch.as_tensor(x).detach().cpu(), name)

    def fingerprint() -> str:
        return hashlib.sha256(f"{name}|{kind}|{n}|{seed}".encode()).hexdigest()

    info: dict[str, Any] = {"seed": seed}
    if kind is not None:
        info["model_kind"] = kind
    return ImageSource("generator", name, n, read, fingerprint, info)


def is_run_or_package(path: Path) -> bool:
    """A path ``breastgan.load_generator`` reads: a run or checkpoint directory, a generator package (or a plug-in's format)."""
    from breastgan.generation.source_loaders import find_source_loader  # lazily: generation is a separately built part

    return path.exists() and find_source_loader(path) is not None


def resolve_source(obj: Any, n: int | None = None, seed: int = 0, role: str = "images") -> ImageSource:
    """Turn a tensor, folder, run directory, generator package, dataset or generator (any kind) into an :class:`ImageSource`."""
    if isinstance(obj, ImageSource):
        return obj
    if isinstance(obj, torch.Tensor):
        return from_tensor(obj, n, role)
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.exists():
            raise FileNotFoundError(f"{path}: --{role} path does not exist")
        if is_run_or_package(path):
            from breastgan.generation import load_generator  # lazily: generation is an optional, separately built part

            gen = load_generator(path)
            cap = gen.capacity
            if n is None and not cap:
                raise ValueError(f"{path}: a generator needs a sample count (--n)" if cap is None else
                                 f"{path}: a {gen.kind} model makes images from input images; bind them (gen.bind(images)) "
                                 "and pass the bound model instead of the path")
            return from_generator(gen, n if n is not None else cap, seed, name=str(path))
        if path.is_dir():
            return from_folder(path, n, seed)
        raise ValueError(f"{path}: expected a folder of images, a run directory or a generator package")
    if callable(getattr(obj, "synthesize_range", None)) or callable(getattr(obj, "sample", None)):
        if n is None and getattr(obj, "capacity", None):
            n = obj.capacity  # a bound translator or an inversion: every image it can make
        return from_generator(obj, n, seed, name=type(obj).__name__)  # type: ignore[arg-type]
    if hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and hasattr(obj, "fingerprint"):
        return from_dataset(obj, n, seed)
    raise TypeError(f"{role}: cannot evaluate an object of type {type(obj).__name__}; pass a tensor, a folder, a run or a dataset")
