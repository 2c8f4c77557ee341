"""Phantom patches: determinism, geometry, labels, power-law texture and visible lesions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from breastgan.data.base import ImageDataset, build_dataset
from breastgan.data.phantom import LESION_TYPES, PhantomDataset, generate_phantom
from breastgan.registry import ConfigArgumentError


def radial_spectrum_slope(images: torch.Tensor, low: float = 4.0, high: float = 0.25) -> float:
    """Slope of log power vs log frequency, radially averaged over patches.

    Hann-windowed to keep the patch border out of the spectrum; fitted between ``low`` cycles per
    patch and ``high`` cycles per pixel (the mid band: above the few lowest modes, below the
    noise floor and the quantisation step).
    """
    x = images[:, 0].double()
    x = x - x.mean(dim=(1, 2), keepdim=True)
    height, width = x.shape[-2:]
    window = torch.hann_window(height, periodic=False, dtype=torch.float64)[:, None] * torch.hann_window(width, periodic=False, dtype=torch.float64)
    power = (torch.fft.fft2(x * window).abs() ** 2).mean(0)
    freq = torch.sqrt(torch.fft.fftfreq(height, dtype=torch.float64)[:, None] ** 2 + torch.fft.fftfreq(width, dtype=torch.float64)[None] ** 2)
    edges = np.exp(np.linspace(np.log(low / min(height, width)), np.log(high), 13))
    centres, levels = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (freq >= lo) & (freq < hi)
        centres.append(float(freq[band].mean()))
        levels.append(float(power[band].mean()))
    return float(np.polyfit(np.log(centres), np.log(levels), 1)[0])


def disc_mask(height: int, width: int, centre: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    cols = torch.arange(width, dtype=torch.float32)[None, :]
    return (rows[None] - centre[:, 0, None, None]) ** 2 + (cols[None] - centre[:, 1, None, None]) ** 2 <= radius[:, None, None] ** 2


def test_same_seed_and_options_give_bit_identical_patches() -> None:
    a = generate_phantom(40, size=64, seed=7)
    b = generate_phantom(40, size=64, seed=7)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.lesion_type, b.lesion_type)
    assert torch.equal(a.lesion_centre.nan_to_num(-1), b.lesion_centre.nan_to_num(-1))
    assert not torch.equal(a.images, generate_phantom(40, size=64, seed=8).images)
    assert not torch.equal(a.images, generate_phantom(40, size=64, seed=7, beta=2.5).images)


@pytest.mark.parametrize("size", [32, 64, 128, 256, (48, 80)])
def test_shapes_dtype_and_value_range(size: int | tuple[int, int]) -> None:
    batch = generate_phantom(12, size=size, seed=1)
    height, width = (size, size) if isinstance(size, int) else size
    assert batch.images.shape == (12, 1, height, width)
    assert batch.images.dtype == torch.float32 and batch.labels.dtype == torch.int64
    assert float(batch.images.min()) >= 0.0 and float(batch.images.max()) <= 1.0
    assert float(batch.images.std()) > 0.02  # texture, not a flat field
    # On the 16-bit grid, so a 16-bit PNG round trip is lossless.
    scaled = batch.images.double() * 65535
    assert torch.allclose(scaled, scaled.round(), atol=1e-3)


def test_label_fraction_and_metadata_agree() -> None:
    batch = generate_phantom(301, size=32, seed=2, lesion_fraction=0.3)  # spans two render chunks
    assert int(batch.labels.sum()) == round(301 * 0.3)
    lesion = batch.labels == 1
    assert torch.equal(lesion, batch.lesion_type > 0)
    assert torch.isnan(batch.lesion_centre[~lesion]).all() and (batch.lesion_radius[~lesion] == 0).all()
    assert (batch.lesion_radius[lesion] > 0).all()
    centre = batch.lesion_centre[lesion]
    assert ((centre >= 0) & (centre < 32)).all()
    assert set(batch.density.tolist()) <= {1, 2, 3, 4}
    assert set(batch.lesion_type_names()) <= set(LESION_TYPES)
    assert generate_phantom(20, size=32, lesion_fraction=0.0).labels.sum() == 0
    assert generate_phantom(20, size=32, lesion_fraction=1.0).labels.sum() == 20


def test_lesion_types_and_density_options_are_obeyed() -> None:
    batch = generate_phantom(30, size=32, lesion_fraction=1.0, lesion_types=["calcification_cluster"], density=3)
    assert set(batch.lesion_type_names()) == {"calcification_cluster"}
    assert (batch.density == 3).all()
    with pytest.raises(ValueError, match="lesion_types"):
        generate_phantom(4, lesion_types=["cyst"])


def test_denser_breasts_are_brighter() -> None:
    means = [float(generate_phantom(64, size=64, seed=3, lesion_fraction=0.0, density=d).images.mean()) for d in (1, 2, 3, 4)]
    assert means == sorted(means) and means[3] - means[0] > 0.1


@pytest.mark.parametrize("beta", [2.5, 3.0, 3.5])
def test_healthy_background_power_spectrum_slope_is_minus_beta(beta: float) -> None:
    # Measured slopes are within 0.15 of -beta for beta 2.5..3.5 (the sigmoid tissue mapping and
    # the acquisition noise flatten the spectrum slightly); 0.3 leaves room for other seeds.
    batch = generate_phantom(128, size=128, seed=4, lesion_fraction=0.0, beta=beta)
    assert abs(radial_spectrum_slope(batch.images) + beta) < 0.3


def test_masses_are_brighter_than_healthy_tissue_at_the_same_place() -> None:
    lesion = generate_phantom(96, size=64, seed=5, lesion_fraction=1.0, density=2, lesion_types=["round_mass", "oval_mass", "spiculated_mass"])
    healthy = generate_phantom(96, size=64, seed=6, lesion_fraction=0.0, density=2)
    region = disc_mask(64, 64, lesion.lesion_centre, 0.6 * lesion.lesion_radius)
    inside_lesion = (lesion.images[:, 0] * region).sum((1, 2)) / region.sum((1, 2))
    same_place_healthy = (healthy.images[:, 0] * region).sum((1, 2)) / region.sum((1, 2))
    assert float(inside_lesion.mean() - same_place_healthy.mean()) > 0.08
    assert float((inside_lesion > same_place_healthy).float().mean()) > 0.8


def test_calcification_clusters_contain_bright_specks() -> None:
    lesion = generate_phantom(64, size=128, seed=7, lesion_fraction=1.0, density=2, lesion_types=["calcification_cluster"])
    healthy = generate_phantom(64, size=128, seed=8, lesion_fraction=0.0, density=2)
    region = disc_mask(128, 128, lesion.lesion_centre, lesion.lesion_radius + 2)

    def brightest_in_region(images: torch.Tensor) -> torch.Tensor:
        values = torch.where(region, images[:, 0], torch.zeros(()))
        return values.flatten(1).topk(5, dim=1).values.mean(1)

    assert float((brightest_in_region(lesion.images) - brightest_in_region(healthy.images)).mean()) > 0.15


def test_registered_dataset_info_and_fingerprint() -> None:
    ds = build_dataset("phantom", {"n": 24, "size": 32, "seed": 1})
    assert isinstance(ds, PhantomDataset) and isinstance(ds, ImageDataset)
    assert ds.info.name == "phantom" and ds.info.image_size == (32, 32)
    assert ds.info.class_names == ("healthy", "lesion") and ds.info.bit_depth == 16
    image, label = ds[3]
    assert image.shape == (1, 32, 32) and label in (0, 1)
    images, labels = ds.get_batch(torch.tensor([0, 5, 7]))
    assert images.shape == (3, 1, 32, 32) and torch.equal(labels, ds.labels[[0, 5, 7]])
    assert ds.metadata.lesion_type.shape == (24,)
    assert ds.fingerprint() == build_dataset("phantom", {"n": 24, "size": 32, "seed": 1}).fingerprint()
    assert ds.fingerprint() != build_dataset("phantom", {"n": 24, "size": 32, "seed": 2}).fingerprint()
    assert build_dataset("phantom", {"n": 8, "size": [32, 48]}).info.image_size == (32, 48)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"density": 5}, r"density: Input should be less than or equal to 4"),
        ({"lesion_fraction": 1.5}, r"lesion_fraction: Input should be less than or equal to 1"),
        ({"size": 8}, r"size"),
        ({"lesion_types": ["cyst"]}, r"lesion_types\.0"),
        ({"colour": True}, r"colour: unknown option for 'phantom'; allowed options: .*beta"),
    ],
)
def test_bad_arguments_give_errors_naming_the_option(args: dict, message: str) -> None:
    with pytest.raises(ConfigArgumentError, match=message):
        build_dataset("phantom", {"n": 4, **args})
