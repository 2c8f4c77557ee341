"""Generated images as DICOM Secondary Capture files (``breastgan generate --format dicom``).

Each image is one SC Image Storage object (SOP class 1.2.840.10008.5.1.4.1.1.7), MONOCHROME2, 16-bit
(or 8-bit) unsigned, explicit VR little endian, with exactly the pixel values the PNG writer stores
(``round(x * 65535)``; ``round(x * 255)`` at 8 bits), so a DICOM and a PNG of the same (seed, index)
hold the same numbers.

Marked as synthetic in every place a reader looks: Conversion Type ``SYN`` (synthetic image),
Image Type ``DERIVED\\SECONDARY``, Burned In Annotation ``NO``, a Derivation Description naming the
generator, seed and index, patient name ``SYNTHETIC^BREASTGAN`` and an Image Comment. UIDs are new
(under the 2.25 UUID root), derived from (generator, seed, index), so the same command writes the
same files (as PNG generation does) and one output set is one study and one series.

View and laterality: ``ViewPosition`` is the image's class when the generator's classes are
mammographic views (CC, MLO, ML, LM, XCCL, ...), e.g. with ``--label CC``; ``ImageLaterality`` is
``L`` because breastgan's full-field data are laterality-normalised with the chest wall on the left
(the left-breast display orientation, data/full_field.py), which is what the generator draws.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from breastgan import __version__
from breastgan.utils.atomic import atomic_path

SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
# DICOM ViewPosition defined terms for mammography (PS3.3 C.8.11.7 / CID 4014), as written by breastgan
MAMMO_VIEWS = frozenset({"CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "RCC", "LCC", "RMLO", "LMLO"})
LATERALITY = "L"


def check_dicom(channels: int, bit_depth: int) -> None:
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16 for DICOM, got {bit_depth}")
    if channels != 1:
        raise ValueError(f"DICOM output holds 1-channel (MONOCHROME2) images; this model makes {channels}-channel images: use format 'npy'")


def quantise(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """(H, W) [0, 1] -> uint16 / uint8 exactly as data.io.write_image quantises PNGs."""
    arr = np.asarray(image, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("refusing to write non-finite pixel values")
    arr = np.clip(arr, 0.0, 1.0)
    return np.round(arr * 65535.0).astype(np.uint16) if bit_depth == 16 else np.round(arr * 255.0).astype(np.uint8)


def label_of(gen: Any, labels: Any, index: int, seed: int) -> str | None:
    """The class name of image ``index``: the requested label, or the one drawn for it (generation.latents)."""
    names = list(getattr(gen, "class_names", []) or [])
    if not getattr(gen, "num_classes", 0):
        return None
    if labels is None:
        from breastgan.generation.latents import latents_for

        lab: Any = int(latents_for(index, index + 1, gen.latent_dim, seed, gen.num_classes)[1][0])
    elif isinstance(labels, (list, tuple)):
        lab = labels[index]
    else:
        lab = labels
    if isinstance(lab, str):
        return lab
    return names[int(lab)] if int(lab) < len(names) else str(int(lab))


def _uid(*parts: Any) -> str:
    """A 2.25 UID (PS3.5 B.2: a UUID as a decimal integer) from a name-based (RFC 4122 version 5) UUID of ``parts``.

    pydicom's ``generate_uid(prefix=None)`` ignores its entropy sources (random UUID), which would make
    every run's files differ; a name-based UUID is as unique per (generator, seed, index) and repeatable.
    """
    import uuid

    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'breastgan/' + json.dumps(parts, sort_keys=True, default=str)).int}"


def write_dicom(path: str | Path, image: np.ndarray, *, bit_depth: int = 16, generator: dict[str, Any] | None = None, seed: int = 0,
                index: int = 0, label: str | None = None) -> dict[str, Any]:
    """One (1, H, W) or (H, W) [0, 1] image as a DICOM SC file, atomically; returns its UIDs and tags for the manifest."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    path = Path(path)
    img = np.asarray(image)
    if img.ndim == 3:
        check_dicom(img.shape[0], bit_depth)
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"{path}: expected a (1, H, W) or (H, W) image, got shape {image.shape}")
    try:
        pixels = quantise(img, bit_depth)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    gen_desc = generator or {}
    set_key = {"generator": gen_desc, "seed": seed}
    study, series, sop = _uid("study", set_key), _uid("series", set_key), _uid("image", set_key, index)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SC_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationVersionName = f"BREASTGAN_{__version__}"[:16]
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SC_IMAGE_STORAGE, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "SYNTH", 1, index + 1
    ds.StudyDate = ds.StudyTime = ds.ContentDate = ds.ContentTime = ""  # a fixed, empty date keeps outputs reproducible
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.PatientName, ds.PatientID = "SYNTHETIC^BREASTGAN", f"SYNTH-{seed}-{index:08d}"
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.Modality = "MG"
    ds.ConversionType = "SYN"  # SC Equipment module: synthetic image
    ds.Manufacturer = ds.SecondaryCaptureDeviceManufacturer = "breastgan"
    ds.SecondaryCaptureDeviceSoftwareVersions = ds.SoftwareVersions = __version__
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    ds.DerivationDescription = (f"Synthetic image generated by breastgan {__version__} "
                                f"({gen_desc.get('arch') or 'generator'}, seed {seed}, index {index}); not an image of a patient")[:1024]
    ds.ImageComments = "SYNTHETIC IMAGE - generated, not acquired"
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = ds.Laterality = LATERALITY
    view = label if label in MAMMO_VIEWS else None
    if view:
        ds.ViewPosition = view
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = bit_depth
    ds.HighBit, ds.PixelRepresentation = bit_depth - 1, 0
    ds.PixelData = pixels.tobytes()
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return {"sop_instance_uid": sop, "series_instance_uid": series, "study_instance_uid": study, "laterality": LATERALITY,
            "view": view, "label": label}


def write_dicom_image(path: Path, image: np.ndarray, gen: Any, *, index: int, seed: int, labels: Any, bit_depth: int) -> dict[str, Any]:
    """The writer hook of generation.writer: image ``index`` of the set for ``seed``, with its class as the view."""
    describe = gen.describe() if hasattr(gen, "describe") else {}
    return write_dicom(path, image, bit_depth=bit_depth, generator=describe, seed=seed, index=index, label=label_of(gen, labels, index, seed))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
