"""Procedural mammography patch phantom: the built-in training data that needs no download.

Background: mammographic parenchyma has a power-law spectrum P(f) ~ 1/f^beta with beta near 3
(Burgess et al. 2001; Heine & Velthuizen 2002). We synthesise a Gaussian random field with that
spectrum (batched FFT), give it a random dominant orientation (ducts and Cooper's ligaments run
toward the nipple, so real texture is anisotropic), and map it through a sigmoid so it reads as
fibroglandular tissue on fat rather than as Gaussian noise. The BI-RADS-like density level sets
the glandular fraction and the tissue brightness.

Lesions are added in the attenuation domain (before display clipping), so they are always
denser than the tissue they sit on: round / oval / spiculated masses with blurred margins, and
clusters of microcalcifications (small bright specks). Every patch carries metadata: label,
density, lesion type, lesion centre and radius.

All randomness comes from one ``torch.Generator`` seeded with ``seed``, consumed in a fixed
order, so the same arguments give bit-identical images (on the same torch build).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from breastgan.data.base import DATASETS, DatasetInfo, TensorDataset

LESION_TYPES: tuple[str, ...] = ("none", "round_mass", "oval_mass", "spiculated_mass", "calcification_cluster")
LesionKind = Literal["round_mass", "oval_mass", "spiculated_mass", "calcification_cluster"]
ALL_LESION_KINDS: tuple[LesionKind, ...] = ("round_mass", "oval_mass", "spiculated_mass", "calcification_cluster")

# Approximate share of BI-RADS density categories a..d in screening populations (ACR atlas).
DENSITY_PRIOR = (0.10, 0.40, 0.40, 0.10)
# Share of the patch covered by fibroglandular tissue, per density level 1..4.
GLANDULAR_FRACTION = (0.15, 0.35, 0.58, 0.80)
# Display intensity of pure fat and of pure glandular tissue, per density level 1..4:
# dense breasts are brighter overall and their tissue contrast lower.
FAT_LEVEL = (0.20, 0.24, 0.28, 0.32)
GLAND_LEVEL = (0.55, 0.60, 0.64, 0.68)

_MAX_SPICULES = 14
_MAX_SPECKS = 24
_OUTLINE_BINS = 720  # half-degree steps; the outline has no detail finer than 4 lobes
_CHUNK = 256  # patches rendered at once; bounds peak memory, fixed so that output never depends on it
_REFERENCE_SIZE = 128.0  # lesion geometry and speck blur are specified at this patch size


@dataclass(frozen=True)
class PhantomBatch:
    """Phantom patches and their ground truth."""

    images: torch.Tensor  # (n, 1, H, W) float32 in [0, 1], on the 16-bit grid
    labels: torch.Tensor  # (n,) int64: 0 healthy, 1 lesion
    density: torch.Tensor  # (n,) int64: 1..4 (BI-RADS-like a..d)
    lesion_type: torch.Tensor  # (n,) int64: index into LESION_TYPES (0 = none)
    lesion_centre: torch.Tensor  # (n, 2) float32: (row, col) in pixels; NaN for healthy patches
    lesion_radius: torch.Tensor  # (n,) float32: mass mean radius or cluster radius, pixels; 0 if healthy

    def __len__(self) -> int:
        return self.images.shape[0]

    def lesion_type_names(self) -> list[str]:
        return [LESION_TYPES[int(t)] for t in self.lesion_type]


def power_law_amplitude(height: int, width: int, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitude |F(f)| = f^(-beta/2) on the rfft2 grid, and the angle of each frequency.

    The DC term is zeroed (it is set by the intensity mapping, not by the texture).
    """
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    radius = torch.sqrt(fy**2 + fx**2)
    amplitude = torch.where(radius > 0, radius.clamp_min(1e-12) ** (-beta / 2.0), torch.zeros(()))
    return amplitude.float(), torch.atan2(fy, fx).expand_as(radius).float()


def power_law_field(
    count: int,
    height: int,
    width: int,
    beta: float,
    generator: torch.Generator,
    anisotropy: torch.Tensor | None = None,
    orientation: torch.Tensor | None = None,
) -> torch.Tensor:
    """(count, H, W) Gaussian random fields with a 1/f^beta power spectrum, each zero-mean, unit-std.

    ``anisotropy`` in [0, 1) and ``orientation`` (radians), per field, tilt the spectrum so the
    texture has a dominant stripe direction without changing its radial power-law slope.
    """
    field = _raw_power_law_field(count, height, width, beta, generator, anisotropy, orientation)
    std, mean = torch.std_mean(field, dim=(1, 2), keepdim=True)
    return (field - mean) / std.clamp_min(1e-12)


def _raw_power_law_field(
    count: int,
    height: int,
    width: int,
    beta: float,
    generator: torch.Generator,
    anisotropy: torch.Tensor | None,
    orientation: torch.Tensor | None,
) -> torch.Tensor:
    """The field before normalisation (its scale is arbitrary; callers fold normalisation into later steps)."""
    amplitude, angle = power_law_amplitude(height, width, beta)
    spectrum = torch.randn((count, height, width // 2 + 1), generator=generator, dtype=torch.complex64)
    if anisotropy is not None and orientation is not None:
        # cos(2(a - o)) = cos 2a cos 2o + sin 2a sin 2o: two per-field scalars times fixed tables.
        cos_term = (anisotropy * torch.cos(2 * orientation))[:, None, None]
        sin_term = (anisotropy * torch.sin(2 * orientation))[:, None, None]
        tilt = torch.addcmul(torch.addcmul(torch.ones(()), cos_term, torch.cos(2 * angle)), sin_term, torch.sin(2 * angle))
        amplitude = amplitude * tilt.sqrt_()
    return torch.fft.irfft2(spectrum.mul_(amplitude), s=(height, width))


def _uniform(generator: torch.Generator, shape: Sequence[int] | int, low: float, high: float) -> torch.Tensor:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return low + (high - low) * torch.rand(shape, generator=generator)


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Materialised, not expand()ed: broadcasting against stride-0 views is several times slower.
    rows = torch.arange(height, dtype=torch.float32)[:, None].repeat(1, width)
    cols = torch.arange(width, dtype=torch.float32)[None, :].repeat(height, 1)
    return rows, cols


def mass_profile(
    height: int,
    width: int,
    centre: torch.Tensor,
    radius: torch.Tensor,
    kind: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """(m, H, W) projected density of m masses, peak about 1.

    ``kind`` per mass: 1 round, 2 oval, 3 spiculated (LESION_TYPES indices). The core is a
    projected ellipsoid (sqrt(1 - d^2) thickness) with a lobulated outline and a sigmoid margin;
    spiculated masses get a sharper core plus thin, tapering radial lines (the spicules).
    """
    m = centre.shape[0]
    aspect = torch.where(kind == 1, _uniform(generator, m, 0.85, 1.0), _uniform(generator, m, 0.5, 0.75))
    tilt = _uniform(generator, m, 0.0, math.pi)
    margin = torch.where(kind == 3, _uniform(generator, m, 0.04, 0.08), _uniform(generator, m, 0.06, 0.2))
    lobulation = torch.where(kind == 3, _uniform(generator, m, 0.08, 0.18), _uniform(generator, m, 0.0, 0.08))
    harmonic_amp = _uniform(generator, (m, 3), 0.0, 1.0) * lobulation[:, None]
    harmonic_phase = _uniform(generator, (m, 3), 0.0, 2 * math.pi)
    # Ellipse with the requested mean radius: semi-axes r/sqrt(aspect) and r*sqrt(aspect).
    semi_major = radius / aspect.sqrt()
    semi_minor = radius * aspect.sqrt()

    # Scaled ellipse coordinates (U, V) of every pixel are affine in (row, col): one matmul
    # computes them for all masses at once.
    cos_t, sin_t = torch.cos(tilt), torch.sin(tilt)
    affine = torch.stack(
        [
            torch.stack([sin_t, cos_t, -(centre[:, 0] * sin_t + centre[:, 1] * cos_t)], dim=1) / semi_major[:, None],
            torch.stack([cos_t, -sin_t, -(centre[:, 0] * cos_t - centre[:, 1] * sin_t)], dim=1) / semi_minor[:, None],
        ]
    )  # (2, m, 3) acting on (row, col, 1)
    rows, cols = _grid(height, width)
    coords = torch.stack([rows.flatten(), cols.flatten(), torch.ones(height * width)])  # (3, HW)
    scaled_u, scaled_v = (affine.view(2 * m, 3) @ coords).view(2, m, height * width)
    distance = torch.addcmul(scaled_u * scaled_u, scaled_v, scaled_v).sqrt_()
    # The lobulated outline depends on the angle only: tabulate it per mass and look it up, which
    # costs a few passes over the pixels instead of a cosine per harmonic.
    table_angle = torch.linspace(-math.pi, math.pi, _OUTLINE_BINS + 1)[:-1]
    harmonics = torch.arange(2, 5, dtype=torch.float32)
    outline = 1.0 + (
        harmonic_amp[:, :, None] * torch.cos(harmonics[None, :, None] * table_angle + harmonic_phase[:, :, None])
    ).sum(dim=1)
    bins = torch.atan2(scaled_v, scaled_u).add_(math.pi).mul_(_OUTLINE_BINS / (2 * math.pi)).long().clamp_(0, _OUTLINE_BINS - 1)
    distance = distance.div_(torch.gather(outline, 1, bins))

    inverse_margin = (1.0 / margin)[:, None]
    edge = torch.addcmul(inverse_margin, distance, -inverse_margin).sigmoid_()  # sigmoid((1 - d) / margin)
    thickness = torch.addcmul(torch.ones(()), distance, distance, value=-1.0).clamp_min_(0.0).sqrt_()
    profile = thickness.mul_(0.4).add_(0.6).mul_(edge).view(m, height, width)

    spiculated = torch.nonzero(kind == 3).flatten()
    if spiculated.numel():
        lines = spicule_lines(centre[spiculated], radius[spiculated], height, width, generator)
        profile = profile.index_add(0, spiculated, lines)
    return profile


def spicule_lines(centre: torch.Tensor, radius: torch.Tensor, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(m, H, W) thin radial lines starting at the mass edge and fading out toward their tips.

    Drawn by splatting points along each line and blurring (cost ~ line length, not ~ H*W per
    line), which is what keeps spiculated masses as cheap as round ones.
    """
    m = radius.shape[0]
    scale = min(height, width) / _REFERENCE_SIZE
    count = torch.randint(7, _MAX_SPICULES + 1, (m,), generator=generator)
    present = (torch.arange(_MAX_SPICULES)[None, :] < count[:, None]).float()
    angle = _uniform(generator, (m, _MAX_SPICULES), -math.pi, math.pi)
    start = 0.85 * radius[:, None]
    length = _uniform(generator, (m, _MAX_SPICULES), 1.0, 2.5) * radius[:, None]
    strength = _uniform(generator, (m, _MAX_SPICULES), 0.45, 0.9) * present
    sigma = max(0.55, 0.7 * scale)

    # Half-pixel spacing along the longest line keeps every line continuous after the blur.
    samples = max(2, math.ceil(2.0 * float(length.max()) + 1)) if m else 2
    progress = torch.linspace(0.0, 1.0, samples)
    distance = start[..., None] + length[..., None] * progress  # (m, k, s)
    direction = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1)  # (row, col)
    points = centre[:, None, None, :] + distance[..., None] * direction[:, :, None, :]
    spacing = length / (samples - 1)
    # A line of linear density w blurred by a Gaussian of std sigma peaks at w / (sqrt(2 pi) sigma).
    weights = (strength * spacing)[..., None] * (1.0 - progress) ** 0.8 * math.sqrt(2 * math.pi) * sigma
    layer = _splat_bilinear(points.view(m, -1, 2), weights.reshape(m, -1), height, width)
    return _gaussian_blur(layer, sigma)


def calcification_layer(
    height: int,
    width: int,
    centre: torch.Tensor,
    radius: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """(m, H, W) clusters of microcalcifications, specks of peak value ~0.3-0.7 above background.

    Specks are splatted bilinearly at sub-pixel positions and blurred with a small Gaussian
    (the detector's point spread); a second, offset sub-speck makes some of them irregular.
    """
    m = centre.shape[0]
    scale = min(height, width) / _REFERENCE_SIZE
    count = torch.randint(5, _MAX_SPECKS + 1, (m,), generator=generator)
    # Positions: Gaussian around the cluster centre, truncated to the cluster radius.
    offsets = torch.randn((m, _MAX_SPECKS, 2), generator=generator) * 0.6
    offsets = offsets / offsets.norm(dim=-1, keepdim=True).clamp_min(1.0)
    positions = centre[:, None, :] + offsets * radius[:, None, None]
    partner = positions + torch.randn((m, _MAX_SPECKS, 2), generator=generator) * 0.8 * max(scale, 0.5)
    amplitude = _uniform(generator, (m, _MAX_SPECKS), 0.4, 1.0)
    partner_amp = amplitude * _uniform(generator, (m, _MAX_SPECKS), 0.0, 0.8)
    present = (torch.arange(_MAX_SPECKS)[None, :] < count[:, None]).float()

    points = torch.cat([positions, partner], dim=1)
    weights = torch.cat([amplitude * present, partner_amp * present], dim=1)
    layer = _splat_bilinear(points, weights, height, width)
    sigma = max(0.6, 0.9 * scale)
    return _gaussian_blur(layer, sigma) * (2 * math.pi * sigma**2) ** 0.5


def _splat_bilinear(points: torch.Tensor, weights: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Accumulate weighted points (m, k, 2 as row/col) into (m, H, W) images with bilinear weights."""
    m = points.shape[0]
    corner = points.floor()
    frac = points - corner
    # The four neighbouring pixels at once: offsets (0,0), (0,1), (1,0), (1,1) on a trailing axis.
    step_r = torch.tensor([0.0, 0.0, 1.0, 1.0])
    step_c = torch.tensor([0.0, 1.0, 0.0, 1.0])
    rows = corner[..., 0, None] + step_r
    cols = corner[..., 1, None] + step_c
    share = (1 - step_r + (2 * step_r - 1) * frac[..., 0, None]) * (1 - step_c + (2 * step_c - 1) * frac[..., 1, None])
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    index = rows.clamp(0, height - 1).mul_(width).add_(cols.clamp(0, width - 1)).long()
    index += (torch.arange(m) * (height * width)).view(m, *([1] * (index.ndim - 1)))
    out = torch.zeros(m * height * width)
    out.index_add_(0, index.flatten(), (share * weights[..., None] * inside).flatten())
    return out.view(m, height, width)


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (m, H, W) images with replicated borders."""
    half = max(1, math.ceil(3 * sigma))
    x = torch.arange(-half, half + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    m = images.shape[0]
    # Images as the channels of one sample with a depthwise kernel: oneDNN handles that far faster
    # than a batch of single-channel images.
    out = images[None]
    out = F.conv2d(F.pad(out, (half, half, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).expand(m, 1, 1, -1), groups=m)
    out = F.conv2d(F.pad(out, (0, 0, half, half), mode="replicate"), kernel.view(1, 1, -1, 1).expand(m, 1, -1, 1), groups=m)
    return out[0]


def _render_chunk(
    plan: dict[str, torch.Tensor],
    height: int,
    width: int,
    beta: float,
    anisotropy: float,
    noise: float,
    generator: torch.Generator,
) -> torch.Tensor:
    count = plan["density"].shape[0]
    level = plan["density"] - 1
    strength = anisotropy * torch.rand(count, generator=generator)
    orientation = _uniform(generator, count, 0.0, math.pi)
    field = _raw_power_law_field(count, height, width, beta, generator, strength, orientation)
    std, mean = torch.std_mean(field, dim=(1, 2), keepdim=True)

    fraction = torch.tensor(GLANDULAR_FRACTION)[level]
    # Threshold at the quantile of the normalised field (~ N(0, 1)) that leaves `fraction` of pixels glandular.
    threshold = torch.special.ndtri(1.0 - fraction) + 0.25 * torch.randn(count, generator=generator)
    softness = _uniform(generator, count, 0.7, 1.1)
    # sigmoid(((field - mean) / std - threshold) / softness) as one fused multiply-add.
    scale = 1.0 / (std.clamp_min(1e-12) * softness[:, None, None])
    offset = -(mean / std.clamp_min(1e-12) + threshold[:, None, None]) / softness[:, None, None]
    tissue = torch.addcmul(offset, field, scale).sigmoid_()
    fat = torch.tensor(FAT_LEVEL)[level][:, None, None]
    gland = torch.tensor(GLAND_LEVEL)[level][:, None, None]
    image = torch.addcmul(fat, tissue, gland - fat)

    kind = plan["lesion_type"]
    is_mass = torch.nonzero((kind >= 1) & (kind <= 3)).flatten()
    if is_mass.numel():
        contrast = _uniform(generator, is_mass.numel(), 0.14, 0.28)
        profile = mass_profile(height, width, plan["centre"][is_mass], plan["radius"][is_mass], kind[is_mass], generator)
        image.index_add_(0, is_mass, profile.mul_(contrast[:, None, None]))
    is_calc = torch.nonzero(kind == 4).flatten()
    if is_calc.numel():
        specks = calcification_layer(height, width, plan["centre"][is_calc], plan["radius"][is_calc], generator)
        image.index_add_(0, is_calc, specks)

    if noise > 0:
        image.add_(torch.randn(image.shape, generator=generator), alpha=noise)
    # Stored on the 16-bit grid so that writing a patch as a 16-bit PNG and reading it back is lossless.
    return image.clamp_(0.0, 1.0).mul_(65535.0).round_().div_(65535.0)


def _plan_patches(
    n: int,
    height: int,
    width: int,
    lesion_fraction: float,
    density: int | None,
    lesion_types: Sequence[str],
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Draw every per-patch choice (label, density, lesion type and geometry) up front."""
    lesion_count = round(n * lesion_fraction)
    labels = torch.zeros(n, dtype=torch.int64)
    labels[torch.randperm(n, generator=generator)[:lesion_count]] = 1

    if density is None:
        dens = torch.multinomial(torch.tensor(DENSITY_PRIOR), n, replacement=True, generator=generator) + 1
    else:
        dens = torch.full((n,), density, dtype=torch.int64)

    kinds = torch.tensor([LESION_TYPES.index(k) for k in lesion_types], dtype=torch.int64)
    choice = torch.randint(0, len(kinds), (n,), generator=generator)
    lesion_type = torch.where(labels == 1, kinds[choice], torch.zeros((), dtype=torch.int64))

    short_side = min(height, width)
    # Lesion patches are centred on the lesion with jitter (the extraction protocol's translation).
    centre = torch.stack(
        [_uniform(generator, n, 0.35, 0.65) * height, _uniform(generator, n, 0.35, 0.65) * width], dim=1
    )
    mass_radius = _uniform(generator, n, 0.09, 0.22) * short_side
    cluster_radius = _uniform(generator, n, 0.06, 0.14) * short_side
    radius = torch.where(lesion_type == 4, cluster_radius, mass_radius)
    radius = torch.where(labels == 1, radius, torch.zeros(()))
    centre = torch.where(labels[:, None] == 1, centre, torch.full((), float("nan")))
    return {"labels": labels, "density": dens, "lesion_type": lesion_type, "centre": centre, "radius": radius}


def generate_phantom(
    n: int,
    *,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    lesion_fraction: float = 0.5,
    density: int | None = None,
    beta: float = 3.0,
    lesion_types: Sequence[str] = ALL_LESION_KINDS,
    anisotropy: float = 0.8,
    noise: float = 0.008,
) -> PhantomBatch:
    """Generate ``n`` phantom mammography patches.

    ``size``: int (square) or (H, W). ``density``: 1..4 for all patches, or None to sample from
    DENSITY_PRIOR. ``lesion_fraction``: share of lesion patches (exactly round(n * fraction)).
    ``lesion_types``: which of ALL_LESION_KINDS lesion patches draw from (uniformly).
    ``anisotropy``: maximum strength of the texture's dominant orientation (0 = isotropic).
    ``noise``: std of white acquisition noise added before quantisation.
    """
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if n < 0 or height < 8 or width < 8:
        raise ValueError(f"generate_phantom: need n >= 0 and size >= 8, got n={n}, size={(height, width)}")
    if not 0.0 <= lesion_fraction <= 1.0:
        raise ValueError(f"generate_phantom: lesion_fraction must be in [0, 1], got {lesion_fraction}")
    if density is not None and density not in (1, 2, 3, 4):
        raise ValueError(f"generate_phantom: density must be 1..4 or None, got {density}")
    unknown = [k for k in lesion_types if k not in ALL_LESION_KINDS]
    if unknown or not lesion_types:
        raise ValueError(f"generate_phantom: lesion_types must be a non-empty subset of {ALL_LESION_KINDS}, got {list(lesion_types)}")

    generator = torch.Generator().manual_seed(seed)
    plan = _plan_patches(n, height, width, lesion_fraction, density, lesion_types, generator)
    chunks = []
    for start in range(0, n, _CHUNK):
        part = {key: value[start : start + _CHUNK] for key, value in plan.items()}
        chunks.append(_render_chunk(part, height, width, beta, anisotropy, noise, generator))
    images = torch.cat(chunks) if chunks else torch.zeros((0, height, width))
    return PhantomBatch(
        images=images[:, None].contiguous(),
        labels=plan["labels"],
        density=plan["density"],
        lesion_type=plan["lesion_type"],
        lesion_centre=plan["centre"].float(),
        lesion_radius=plan["radius"].float(),
    )


PatchSide = Annotated[int, Field(ge=16, le=1024)]


class PhantomArgs(BaseModel):
    """Options of the ``phantom`` dataset."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(2048, ge=1, le=1_000_000, description="number of patches")
    size: PatchSide | tuple[PatchSide, PatchSide] = Field(128, description="side, or [H, W]")
    seed: int = Field(0, ge=0, description="random seed; same seed and options give identical patches")
    lesion_fraction: float = Field(0.5, ge=0.0, le=1.0, description="share of lesion (label 1) patches")
    density: int | None = Field(None, ge=1, le=4, description="BI-RADS-like density 1..4; null samples a population mix")
    beta: float = Field(3.0, ge=1.0, le=5.0, description="power-law exponent of the background spectrum")
    lesion_types: list[LesionKind] = Field(list(ALL_LESION_KINDS), min_length=1, description="lesion kinds to draw from")
    anisotropy: float = Field(0.8, ge=0.0, le=0.95, description="maximum strength of the texture orientation")
    noise: float = Field(0.008, ge=0.0, le=0.2, description="std of white acquisition noise")


@DATASETS.register("phantom", args=PhantomArgs, summary="Procedural mammography patches: power-law parenchyma, masses and calcifications (no download)")
class PhantomDataset(TensorDataset):
    """In-memory phantom patches; ``metadata`` holds per-patch density, lesion type and geometry."""

    def __init__(self, **options: object):
        args = PhantomArgs.model_validate(options)
        batch = generate_phantom(
            args.n,
            size=args.size,
            seed=args.seed,
            lesion_fraction=args.lesion_fraction,
            density=args.density,
            beta=args.beta,
            lesion_types=args.lesion_types,
            anisotropy=args.anisotropy,
            noise=args.noise,
        )
        height, width = batch.images.shape[-2:]
        info = DatasetInfo(
            name="phantom",
            image_size=(height, width),
            class_names=("healthy", "lesion"),
            bit_depth=16,
            extra={"lesion_types": LESION_TYPES, "options": args.model_dump(mode="json")},
        )
        super().__init__(batch.images, batch.labels, info, source="phantom:" + json.dumps(args.model_dump(mode="json"), sort_keys=True))
        self.args = args
        self.metadata = batch
