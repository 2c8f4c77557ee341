"""read_image / write_image: bit depth kept, colour policies, clear errors on bad files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from breastgan.data.io import ImageReadError, read_image, write_image


def ramp16(height: int = 32, width: int = 48) -> np.ndarray:
    """A 16-bit image whose values are not multiples of 257, so 8-bit truncation would show."""
    return ((np.arange(height * width).reshape(height, width) * 37 + 11) % 65536).astype(np.uint16)


def write_png16_colour(path: Path, array: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width = array.shape[:2]
    raw = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_png16_round_trip_keeps_16_bit_precision(tmp_path: Path) -> None:
    stored = ramp16()
    Image.fromarray(stored).save(tmp_path / "a.png")
    decoded = read_image(tmp_path / "a.png")
    assert decoded.bit_depth == 16 and decoded.pixels.dtype == np.float32
    np.testing.assert_array_equal(np.round(decoded.pixels * 65535).astype(np.uint16), stored)


def test_write_image_16_bit_then_read_is_lossless_on_the_16_bit_grid(tmp_path: Path) -> None:
    pixels = ramp16().astype(np.float32) / 65535
    write_image(tmp_path / "b.png", pixels, bit_depth=16)
    decoded = read_image(tmp_path / "b.png")
    assert decoded.bit_depth == 16
    assert np.abs(decoded.pixels - pixels).max() < 0.5 / 65535


def test_png8(tmp_path: Path) -> None:
    stored = (np.arange(256, dtype=np.uint8).reshape(16, 16))
    Image.fromarray(stored, mode="L").save(tmp_path / "c.png")
    decoded = read_image(tmp_path / "c.png")
    assert decoded.bit_depth == 8
    np.testing.assert_allclose(decoded.pixels, stored / 255.0, atol=1e-7)


def test_tiff16_via_tifffile(tmp_path: Path) -> None:
    stored = ramp16()
    tifffile.imwrite(tmp_path / "d.tif", stored)
    decoded = read_image(tmp_path / "d.tif")
    assert decoded.bit_depth == 16
    np.testing.assert_array_equal(np.round(decoded.pixels * 65535).astype(np.uint16), stored)


def test_pgm8(tmp_path: Path) -> None:
    stored = (np.arange(20 * 10) % 256).astype(np.uint8).reshape(10, 20)
    (tmp_path / "e.pgm").write_bytes(b"P5\n20 10\n255\n" + stored.tobytes())
    decoded = read_image(tmp_path / "e.pgm")
    assert decoded.bit_depth == 8 and decoded.pixels.shape == (10, 20)
    np.testing.assert_allclose(decoded.pixels, stored / 255.0, atol=1e-7)


def test_pgm16_maxval_65535_written_by_hand(tmp_path: Path) -> None:
    stored = ramp16(12, 20)
    (tmp_path / "f.pgm").write_bytes(b"P5\n20 12\n65535\n" + stored.astype(">u2").tobytes())  # PGM is big-endian
    decoded = read_image(tmp_path / "f.pgm")
    assert decoded.bit_depth == 16
    np.testing.assert_array_equal(np.round(decoded.pixels * 65535).astype(np.uint16), stored)


def test_rgb_to_grey_uses_bt601_luma_and_policies(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "g.png")
    decoded = read_image(tmp_path / "g.png")
    assert decoded.converted_from_rgb
    np.testing.assert_allclose(decoded.pixels, (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255.0, atol=1e-6)
    with pytest.raises(ImageReadError, match=r"g\.png.*rgb_policy='error'"):
        read_image(tmp_path / "g.png", rgb_policy="error")
    with pytest.raises(ImageReadError, match=r"g\.png.*channels differ"):
        read_image(tmp_path / "g.png", rgb_policy="require-equal")

    grey_as_rgb = np.repeat(np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 10, 3, axis=2)
    Image.fromarray(grey_as_rgb, mode="RGB").save(tmp_path / "h.png")
    np.testing.assert_allclose(read_image(tmp_path / "h.png", rgb_policy="require-equal").pixels, grey_as_rgb[..., 0] / 255.0, atol=1e-6)


def test_rgba_opaque_is_accepted_and_translucent_is_refused(tmp_path: Path) -> None:
    rgba = np.full((4, 4, 4), 255, dtype=np.uint8)
    rgba[..., :3] = 80
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "i.png")
    np.testing.assert_allclose(read_image(tmp_path / "i.png").pixels, 80 / 255.0, atol=1e-6)
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "j.png")
    with pytest.raises(ImageReadError, match=r"j\.png.*alpha"):
        read_image(tmp_path / "j.png")


def test_grey_with_opaque_alpha_is_read_as_grey(tmp_path: Path) -> None:
    la = np.stack([np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, np.full((4, 4), 255, np.uint8)], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "k.png")
    decoded = read_image(tmp_path / "k.png")
    np.testing.assert_allclose(decoded.pixels, la[..., 0] / 255.0, atol=1e-7)


def test_16_bit_colour_png_is_refused_not_truncated(tmp_path: Path) -> None:
    grey = ramp16(8, 8)
    write_png16_colour(tmp_path / "l.png", np.stack([grey, grey, grey], axis=-1))
    with pytest.raises(ImageReadError, match=r"l\.png: 16-bit colour"):
        read_image(tmp_path / "l.png")


def test_16_bit_colour_tiff_keeps_precision(tmp_path: Path) -> None:
    grey = ramp16(8, 8)
    tifffile.imwrite(tmp_path / "m.tif", np.stack([grey, grey, grey], axis=-1))
    decoded = read_image(tmp_path / "m.tif", rgb_policy="require-equal")
    assert decoded.bit_depth == 16
    np.testing.assert_allclose(decoded.pixels, grey / 65535.0, atol=1e-6)


def test_truncated_png_raises_image_read_error_naming_the_file(tmp_path: Path) -> None:
    Image.fromarray(ramp16()).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png: cannot decode"):
        read_image(tmp_path / "cut.png")


def test_truncated_pgm_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "cut.pgm").write_bytes(b"P5\n20 12\n65535\n" + b"\x00" * 100)
    with pytest.raises(ImageReadError, match=r"cut\.pgm"):
        read_image(tmp_path / "cut.pgm")
    with pytest.raises(ImageReadError, match=r"absent\.png: file not found"):
        read_image(tmp_path / "absent.png")
