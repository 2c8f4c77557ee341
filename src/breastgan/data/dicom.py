"""DICOM mammograms to float32 [0, 1], in the order the standard prescribes (conventions.md).

1. stored values with BitsStored / PixelRepresentation respected (bits above BitsStored are
   masked, signed values sign-extended from BitsStored, not from the 16-bit word);
2. modality LUT (rescale or Modality LUT Sequence) via ``pydicom.pixels.apply_modality_lut``;
3. VOI: a window (LINEAR, LINEAR_EXACT, SIGMOID; selectable index) or the VOI LUT Sequence,
   via pydicom's ``apply_windowing`` / ``apply_voi``, normalised by the output range pydicom uses;
4. MONOCHROME1 or PresentationLUTShape INVERSE: inverted *after* the VOI step.

Every decode returns the recipe it followed, so a manifest can say exactly how pixels were made,
and the tags a data curator needs (presentation intent, laterality, view, spacing, vendor) with the
PatientID hashed, never in clear.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from breastgan.data.io import ImageReadError

VoiChoice = Literal["auto", "window", "lut", "none"]

# Which package decodes which transfer syntax: the hint a user needs when pydicom has no plugin.
CODEC_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg",  # JPEG extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (or nothing: pydicom decodes RLE itself)",
}
FALLBACK_CODEC_HINT = "a codec that supports it (pylibjpeg with pylibjpeg-openjpeg / pylibjpeg-libjpeg, or python-gdcm)"


class DicomReadError(ImageReadError):
    """A DICOM file could not be decoded; the message names the file and what to do."""


@dataclass(frozen=True)
class DicomMeta:
    presentation_intent: str | None  # "FOR PRESENTATION" / "FOR PROCESSING"
    laterality: str | None  # "L" / "R"
    view: str | None  # ViewPosition: CC, MLO, ...
    pixel_spacing_mm: tuple[float, float] | None  # (row, column)
    manufacturer: str | None
    body_part: str | None
    patient_hash: str | None
    photometric: str
    bits_stored: int
    transfer_syntax: str
    shape: tuple[int, int]


@dataclass(frozen=True)
class DicomImage:
    pixels: np.ndarray  # float32 (H, W) in [0, 1]
    meta: DicomMeta
    recipe: tuple[str, ...] = field(default_factory=tuple)

    @property
    def recipe_text(self) -> str:
        return "; ".join(self.recipe)


def hash_patient_id(patient_id: str, salt: str = "breastgan") -> str:
    """One-way, salted: the same patient maps to the same id across files; the clear id never leaves."""
    return hashlib.sha256(f"{salt}\x00{patient_id}".encode()).hexdigest()[:16]


def codec_hint(transfer_syntax_uid: str) -> str:
    return CODEC_PACKAGES.get(str(transfer_syntax_uid), FALLBACK_CODEC_HINT)


def stored_values(raw: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Stored values as int64 using only the low ``bits_stored`` bits (overlay/garbage bits dropped)."""
    arr = raw.astype(np.int64)
    mask = (1 << bits_stored) - 1
    arr &= mask
    if signed:
        sign = 1 << (bits_stored - 1)
        arr = (arr ^ sign) - sign
    return arr


def _stored_range(ds: Any) -> tuple[float, float]:
    """Range of the modality-LUT output for every possible stored value (as pydicom's windowing uses)."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    lo, hi = (0.0, float(2**bits - 1)) if int(ds.PixelRepresentation) == 0 else (float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1))
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return (min(lo, hi), max(lo, hi))


def _read_dataset(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise DicomReadError(f"{path}: not a DICOM file ({exc})") from exc
    except Exception as exc:  # truncated headers raise EOFError, struct.error, ...
        raise DicomReadError(f"{path}: cannot read DICOM header ({type(exc).__name__}: {exc})") from exc


def _decode_pixels(ds: Any, path: Path) -> np.ndarray:
    ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))
    if "PixelData" not in ds:
        raise DicomReadError(f"{path}: no PixelData element; not an image")
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        msg = str(exc)
        if "plugin" in msg or "decoder" in msg or "transfer syntax" in msg.lower():
            raise DicomReadError(
                f"{path}: cannot decode transfer syntax {ts} ({getattr(ds.file_meta.TransferSyntaxUID, 'name', ts)}): "
                f"no codec installed; install {codec_hint(ts)} (pip install 'breastgan[data]')"
            ) from exc
        raise DicomReadError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # truncated pixel data raises ValueError/EOFError inside pydicom
        raise DicomReadError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc})") from exc


def _str_or_none(ds: Any, keyword: str) -> str | None:
    v = ds.get(keyword)
    if v is None or str(v).strip() == "":
        return None
    return str(v).strip()


def _spacing(ds: Any) -> tuple[float, float] | None:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(kw)
        if v is not None and len(v) == 2:
            return (float(v[0]), float(v[1]))
    return None


def read_dicom_meta(ds: Any, shape: tuple[int, int], salt: str = "breastgan") -> DicomMeta:
    pid = _str_or_none(ds, "PatientID")
    return DicomMeta(
        presentation_intent=_str_or_none(ds, "PresentationIntentType"),
        laterality=_str_or_none(ds, "ImageLaterality") or _str_or_none(ds, "Laterality"),
        view=_str_or_none(ds, "ViewPosition"),
        pixel_spacing_mm=_spacing(ds),
        manufacturer=_str_or_none(ds, "Manufacturer"),
        body_part=_str_or_none(ds, "BodyPartExamined"),
        patient_hash=hash_patient_id(pid, salt) if pid else None,
        photometric=str(ds.get("PhotometricInterpretation", "")),
        bits_stored=int(ds.get("BitsStored", 0) or 0),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        shape=shape,
    )


def _apply_voi(arr: np.ndarray, ds: Any, voi: VoiChoice, window_index: int, path: Path) -> tuple[np.ndarray, str]:
    """VOI step, returning values in [0, 1] and a description of what was applied."""
    from pydicom.pixels import apply_voi, apply_windowing

    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    has_lut = bool(ds.get("VOILUTSequence"))
    if voi == "auto":
        voi = "window" if has_window else ("lut" if has_lut else "none")
    if voi == "window":
        if not has_window:
            raise DicomReadError(f"{path}: voi='window' but WindowCenter/WindowWidth are absent")
        n = ds["WindowCenter"].VM
        if not 0 <= window_index < n:
            raise DicomReadError(f"{path}: window_index {window_index} out of range; the file lists {n} window(s)")
        func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        try:
            out = apply_windowing(arr, ds, index=window_index)
        except ValueError as exc:
            raise DicomReadError(f"{path}: invalid VOI window ({exc})") from exc
        lo, hi = _stored_range(ds)
        centre = ds["WindowCenter"].value if n == 1 else ds["WindowCenter"].value[window_index]
        width = ds["WindowWidth"].value if ds["WindowWidth"].VM == 1 else ds["WindowWidth"].value[window_index]
        out = (out - lo) / (hi - lo)
        return out, f"VOI window #{window_index} {func} centre={float(centre):g} width={float(width):g}"
    if voi == "lut":
        if not has_lut:
            raise DicomReadError(f"{path}: voi='lut' but there is no VOI LUT Sequence")
        item = ds.VOILUTSequence[window_index] if window_index < len(ds.VOILUTSequence) else None
        if item is None:
            raise DicomReadError(f"{path}: window_index {window_index} out of range; {len(ds.VOILUTSequence)} VOI LUT(s)")
        out = apply_voi(arr, ds, index=window_index).astype(np.float64)
        bits = int(item.LUTDescriptor[2])
        top = max(float(2**bits - 1), float(out.max()) if out.size else 1.0)
        return out / top, f"VOI LUT #{window_index} ({bits}-bit entries)"
    lo, hi = _stored_range(ds)
    out = (arr.astype(np.float64) - lo) / (hi - lo)
    return out, f"no VOI: scaled by the full stored range [{lo:g}, {hi:g}]"


def read_dicom(
    path: str | Path,
    *,
    voi: VoiChoice = "auto",
    window_index: int = 0,
    patient_salt: str = "breastgan",
    read_pixels: bool = True,
) -> DicomImage:
    """Decode a greyscale DICOM image to float32 [0, 1] (see module docstring for the order)."""
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    if not path.is_file():
        raise DicomReadError(f"{path}: file not found")
    ds = _read_dataset(path)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomReadError(f"{path}: PhotometricInterpretation is {photometric!r}; expected MONOCHROME1 or MONOCHROME2")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomReadError(f"{path}: {frames} frames (tomosynthesis or cine?); expected a single-frame image")
    if not read_pixels:
        shape = (int(ds.Rows), int(ds.Columns))
        return DicomImage(np.zeros((0, 0), np.float32), read_dicom_meta(ds, shape, patient_salt), ())

    raw = _decode_pixels(ds, path)
    bits = int(ds.BitsStored)
    signed = int(ds.PixelRepresentation) == 1
    recipe = [f"stored {bits}-bit {'signed' if signed else 'unsigned'} in {int(ds.BitsAllocated)}-bit words ({ds.file_meta.TransferSyntaxUID})"]
    arr = stored_values(raw, bits, signed)
    if ds.get("ModalityLUTSequence"):
        recipe.append("modality LUT sequence")
    elif ds.get("RescaleSlope") is not None or ds.get("RescaleIntercept") is not None:
        recipe.append(f"rescale slope={float(ds.get('RescaleSlope', 1)):g} intercept={float(ds.get('RescaleIntercept', 0)):g}")
    modality = apply_modality_lut(arr, ds)
    out, voi_text = _apply_voi(modality, ds, voi, window_index, path)
    recipe.append(voi_text)
    inverse = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if inverse:
        # MONOCHROME1 and presentation LUT INVERSE describe the same display inversion: applied once
        out = 1.0 - out
        recipe.append(f"inverted after VOI ({photometric}, PresentationLUTShape={ds.get('PresentationLUTShape', 'absent')})")
    pixels = np.clip(out, 0.0, 1.0).astype(np.float32)
    return DicomImage(np.ascontiguousarray(pixels), read_dicom_meta(ds, pixels.shape, patient_salt), tuple(recipe))
