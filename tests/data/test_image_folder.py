"""ImageFolderDataset: formats, labels from CSV, resize policy, clear errors, fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from breastgan.data.base import ImageDataset, build_dataset
from breastgan.data.image_folder import ImageFolderDataset, ImageFolderError
from breastgan.data.io import ImageReadError
from breastgan.registry import ConfigArgumentError


def grey16(height: int, width: int, offset: int = 0) -> np.ndarray:
    return ((np.arange(height * width).reshape(height, width) * 97 + 13 + offset) % 65536).astype(np.uint16)


def make_folder(root: Path, size: tuple[int, int] = (16, 24)) -> dict[str, np.ndarray]:
    """Four images in three formats and two folders; returns the expected [0, 1] pixels by name."""
    height, width = size
    (root / "sub").mkdir(parents=True)
    expected = {}
    a = grey16(height, width)
    Image.fromarray(a).save(root / "a.png")
    expected["a.png"] = a / 65535.0
    b = (np.arange(height * width).reshape(height, width) % 256).astype(np.uint8)
    Image.fromarray(b, mode="L").save(root / "b.png")
    expected["b.png"] = b / 255.0
    c = grey16(height, width, offset=5)
    tifffile.imwrite(root / "sub" / "c.tif", c)
    expected["sub/c.tif"] = c / 65535.0
    d = grey16(height, width, offset=9)
    (root / "sub" / "d.pgm").write_bytes(f"P5\n{width} {height}\n65535\n".encode() + d.astype(">u2").tobytes())
    expected["sub/d.pgm"] = d / 65535.0
    (root / "notes.txt").write_text("not an image")
    return expected


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "filename,label") -> None:
    path.write_text(header + "\n" + "".join(f"{name},{label}\n" for name, label in rows))


def test_reads_8_and_16_bit_files_recursively_without_truncation(tmp_path: Path) -> None:
    expected = make_folder(tmp_path)
    ds = build_dataset("image_folder", {"root": str(tmp_path)})
    assert isinstance(ds, ImageFolderDataset) and isinstance(ds, ImageDataset)
    assert [f.as_posix() for f in ds.files] == sorted(expected)
    assert ds.info.image_size == (16, 24) and ds.info.bit_depth == 16 and ds.info.class_names == ("image",)
    for index, name in enumerate(ds.files):
        image, label = ds[index]
        assert image.shape == (1, 16, 24) and image.dtype == torch.float32 and label == 0
        np.testing.assert_allclose(image[0].numpy(), expected[name.as_posix()], atol=1e-6)


def test_non_recursive_only_takes_top_level_files(tmp_path: Path) -> None:
    make_folder(tmp_path)
    ds = ImageFolderDataset(root=str(tmp_path), recursive=False)
    assert [f.as_posix() for f in ds.files] == ["a.png", "b.png"]


def test_csv_labels_in_sorted_order_and_explicit_class_names(tmp_path: Path) -> None:
    make_folder(tmp_path)
    write_csv(tmp_path / "labels.csv", [("a.png", "malignant"), ("b.png", "benign"), ("sub/c.tif", "normal"), ("./sub/d.pgm", "benign")])
    ds = ImageFolderDataset(root=str(tmp_path), labels_csv="labels.csv")
    assert ds.info.class_names == ("benign", "malignant", "normal")
    assert ds.labels.tolist() == [1, 0, 2, 0]
    explicit = ImageFolderDataset(root=str(tmp_path), labels_csv="labels.csv", class_names=["normal", "benign", "malignant"])
    assert explicit.labels.tolist() == [2, 1, 0, 1]


def test_integer_labels_sort_numerically_and_columns_are_configurable(tmp_path: Path) -> None:
    make_folder(tmp_path)
    write_csv(tmp_path / "y.csv", [("a.png", "10"), ("b.png", "2"), ("sub/c.tif", "2"), ("sub/d.pgm", "1")], header="image,target")
    ds = ImageFolderDataset(root=str(tmp_path), labels_csv=str(tmp_path / "y.csv"), filename_column="image", label_column="target")
    assert ds.info.class_names == ("1", "2", "10")
    assert ds.labels.tolist() == [2, 1, 1, 0]


def test_csv_problems_name_the_file_and_the_field(tmp_path: Path) -> None:
    make_folder(tmp_path)
    rows = [("a.png", "x"), ("b.png", "y"), ("sub/c.tif", "x"), ("sub/d.pgm", "y")]
    write_csv(tmp_path / "missing.csv", rows + [("ghost.png", "x")])
    with pytest.raises(ImageFolderError, match=r"missing\.csv:6: filename 'ghost\.png' is not an image"):
        ImageFolderDataset(root=str(tmp_path), labels_csv="missing.csv")
    write_csv(tmp_path / "partial.csv", rows[:3])
    with pytest.raises(ImageFolderError, match=r"partial\.csv: no row for image\(s\) sub/d\.pgm"):
        ImageFolderDataset(root=str(tmp_path), labels_csv="partial.csv")
    write_csv(tmp_path / "full.csv", rows)
    with pytest.raises(ImageFolderError, match=r"full\.csv:3: b\.png: label 'y' is not one of class_names \['x', 'z'\]"):
        ImageFolderDataset(root=str(tmp_path), labels_csv="full.csv", class_names=["x", "z"])
    with pytest.raises(ImageFolderError, match=r"label_column: no column 'grade'"):
        ImageFolderDataset(root=str(tmp_path), labels_csv="full.csv", label_column="grade")
    write_csv(tmp_path / "dup.csv", rows + [("a.png", "y")])
    with pytest.raises(ImageFolderError, match=r"dup\.csv:6: a\.png already labelled on line 2"):
        ImageFolderDataset(root=str(tmp_path), labels_csv="dup.csv")


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    make_folder(tmp_path)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        ImageFolderDataset(root=str(tmp_path))
    lazy = ImageFolderDataset(root=str(tmp_path), cache=False)  # only headers are read up front
    broken_index = [f.as_posix() for f in lazy.files].index("broken.png")
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        lazy[broken_index]


def test_mixed_sizes_error_names_the_first_mismatching_file_unless_size_is_set(tmp_path: Path) -> None:
    make_folder(tmp_path)
    Image.fromarray(grey16(20, 30)).save(tmp_path / "big.png")
    for cache in (True, False):
        with pytest.raises(ImageFolderError, match=r"big\.png: size 20x30 differs from 16x24 of a\.png; set size"):
            ImageFolderDataset(root=str(tmp_path), cache=cache)
    ds = ImageFolderDataset(root=str(tmp_path), size=(8, 12))
    assert ds.info.image_size == (8, 12) and len(ds) == 5
    images, _ = ds.get_batch(torch.arange(len(ds)))
    assert images.shape == (5, 1, 8, 12)


def test_downscaling_averages_areas(tmp_path: Path) -> None:
    pixels = np.zeros((8, 8), dtype=np.uint16)
    pixels[:, 1::2] = 65535  # stripes: area averaging gives flat 0.5, sampling would alias
    Image.fromarray(pixels).save(tmp_path / "stripes.png")
    image, _ = ImageFolderDataset(root=str(tmp_path), size=(4, 4))[0]
    np.testing.assert_allclose(image.numpy(), 0.5, atol=1e-6)


def test_aspect_policy_is_explicit(tmp_path: Path) -> None:
    Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(ImageFolderError, match=r"wide\.png: size 10x20 has a different aspect ratio .* set aspect"):
        ImageFolderDataset(root=str(tmp_path), size=(8, 8))
    with pytest.raises(ImageFolderError, match=r"wide\.png"):
        ImageFolderDataset(root=str(tmp_path), size=(8, 8), cache=False)
    stretched, _ = ImageFolderDataset(root=str(tmp_path), size=(8, 8), aspect="stretch")[0]
    cropped, _ = ImageFolderDataset(root=str(tmp_path), size=(8, 8), aspect="center_crop")[0]
    padded, _ = ImageFolderDataset(root=str(tmp_path), size=(8, 8), aspect="pad")[0]
    assert float(stretched.min()) == 1.0 and float(cropped.min()) == 1.0
    assert float(padded[0, 0].max()) == 0.0 and float(padded[0, 4].min()) == 1.0  # black bands top and bottom


def test_uncached_matches_cached_and_get_batch(tmp_path: Path) -> None:
    make_folder(tmp_path)
    cached = ImageFolderDataset(root=str(tmp_path), size=(8, 12))
    lazy = ImageFolderDataset(root=str(tmp_path), size=(8, 12), cache=False)
    assert lazy.info == cached.info
    indices = torch.tensor([3, 0, 2])
    images_cached, labels_cached = cached.get_batch(indices)
    images_lazy, labels_lazy = lazy.get_batch(indices)
    assert images_cached.shape == (3, 1, 8, 12)
    assert torch.equal(images_cached, images_lazy) and torch.equal(labels_cached, labels_lazy)
    assert cached.fingerprint() == lazy.fingerprint()


def test_rgb_policy_applies(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "red.png")
    image, _ = ImageFolderDataset(root=str(tmp_path))[0]
    np.testing.assert_allclose(image.numpy(), 0.299, atol=1e-6)
    with pytest.raises(ImageReadError, match=r"red\.png.*rgb_policy='error'"):
        ImageFolderDataset(root=str(tmp_path), rgb_policy="error")


def test_fingerprint_tracks_bytes_labels_and_options(tmp_path: Path) -> None:
    make_folder(tmp_path)
    write_csv(tmp_path / "labels.csv", [("a.png", "x"), ("b.png", "y"), ("sub/c.tif", "x"), ("sub/d.pgm", "y")])
    base = ImageFolderDataset(root=str(tmp_path), labels_csv="labels.csv").fingerprint()
    assert base == ImageFolderDataset(root=str(tmp_path), labels_csv="labels.csv").fingerprint()
    assert base != ImageFolderDataset(root=str(tmp_path), labels_csv="labels.csv", size=(8, 12)).fingerprint()
    write_csv(tmp_path / "labels.csv", [("a.png", "y"), ("b.png", "y"), ("sub/c.tif", "x"), ("sub/d.pgm", "y")])
    relabelled = ImageFolderDataset(root=str(tmp_path), labels_csv="labels.csv").fingerprint()
    assert relabelled != base
    Image.fromarray(grey16(16, 24, offset=1)).save(tmp_path / "a.png")
    assert ImageFolderDataset(root=str(tmp_path), labels_csv="labels.csv").fingerprint() != relabelled


def test_bad_options_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigArgumentError, match=r"extensions: .*unsupported extension"):
        build_dataset("image_folder", {"root": str(tmp_path), "extensions": [".gif"]})
    with pytest.raises(ConfigArgumentError, match=r"shuffle: unknown option for 'image_folder'"):
        build_dataset("image_folder", {"root": str(tmp_path), "shuffle": True})
    with pytest.raises(ConfigArgumentError, match=r"aspect"):
        build_dataset("image_folder", {"root": str(tmp_path), "aspect": "squash"})
    with pytest.raises(ImageFolderError, match=r"root: no files with extensions"):
        ImageFolderDataset(root=str(tmp_path))
    with pytest.raises(ImageFolderError, match=r"root: .* is not a folder"):
        ImageFolderDataset(root=str(tmp_path / "absent"))
