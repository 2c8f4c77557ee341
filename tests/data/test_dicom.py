"""DICOM decoding against values computed by hand from the standard's formulas (PS3.3 C.11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid  # noqa: E402

from breastgan.data.dicom import DicomReadError, codec_hint, hash_patient_id, read_dicom  # noqa: E402


def make_dicom(path: Path, arr: np.ndarray, *, bits_stored: int = 16, signed: bool = False, photometric: str = "MONOCHROME2", **tags) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if arr.dtype.itemsize == 2 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome1_inverted_after_scaling(tmp_path):
    arr = np.array([[0, 51, 255], [100, 200, 10]], dtype=np.uint8)
    img = read_dicom(make_dicom(tmp_path / "m1.dcm", arr, bits_stored=8, photometric="MONOCHROME1"))
    np.testing.assert_allclose(img.pixels, 1.0 - arr / 255.0, atol=1e-6)
    assert img.pixels.dtype == np.float32
    assert any("inverted after VOI" in step for step in img.recipe)


def test_12bit_window_linear_ignores_bits_above_bits_stored(tmp_path):
    values = np.array([[0, 1535, 1536, 2000], [2048, 2559, 2560, 4095]], dtype=np.uint16)
    stored = values | np.uint16(0xF000)  # overlay/garbage in the unused high bits
    img = read_dicom(make_dicom(tmp_path / "w.dcm", stored, bits_stored=12, WindowCenter=2048, WindowWidth=1024))
    # LINEAR (C.11.2.1.2.1): c' = 2047.5, w' = 1023; x <= 1536 -> 0, x > 2559 -> 1, else (x - c') / w' + 0.5
    def linear(x):
        return 0.0 if x <= 1536 else (1.0 if x > 2559 else (x - 2047.5) / 1023 + 0.5)

    expected = np.vectorize(linear)(values.astype(float))
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    assert expected[0, 3] == pytest.approx(0.4535679, abs=1e-6)


def test_rescale_then_window_linear_exact_and_index(tmp_path):
    arr = np.array([[0, 100, 200, 300]], dtype=np.uint16)
    # modality: y = 2 x - 100 -> [-100, 100, 300, 500]; window #1 (LINEAR_EXACT) centre 200 width 400
    path = make_dicom(
        tmp_path / "r.dcm", arr, bits_stored=10, RescaleSlope=2, RescaleIntercept=-100,
        WindowCenter=[9999, 200], WindowWidth=[1, 400], VOILUTFunction="LINEAR_EXACT",
    )
    img = read_dicom(path, window_index=1)
    expected = np.clip((np.array([-100, 100, 300, 500]) - 200) / 400 + 0.5, 0, 1)
    np.testing.assert_allclose(img.pixels[0], expected, atol=1e-6)
    with pytest.raises(DicomReadError, match="window_index 2 out of range"):
        read_dicom(path, window_index=2)


def test_sigmoid_voi(tmp_path):
    arr = np.array([[0, 75, 100, 125, 255]], dtype=np.uint8)
    img = read_dicom(make_dicom(tmp_path / "s.dcm", arr, bits_stored=8, WindowCenter=100, WindowWidth=50, VOILUTFunction="SIGMOID"))
    expected = 1.0 / (1.0 + np.exp(-4.0 * (arr[0] - 100.0) / 50.0))
    np.testing.assert_allclose(img.pixels[0], expected, atol=1e-6)
    assert "SIGMOID" in img.recipe_text


def test_voi_lut_sequence_and_presentation_inverse(tmp_path):
    arr = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.add_new(0x00283006, "US", [0, 10, 200, 255])  # LUTData as US (8-bit entries in 16-bit words)
    path = make_dicom(tmp_path / "lut.dcm", arr, bits_stored=2, PresentationLUTShape="INVERSE")
    ds = pydicom.dcmread(path)
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path)
    img = read_dicom(path, voi="lut")
    np.testing.assert_allclose(img.pixels[0], 1.0 - np.array([0, 10, 200, 255]) / 255.0, atol=1e-6)


def test_monochrome1_with_inverse_shape_is_inverted_once(tmp_path):
    arr = np.array([[0, 255]], dtype=np.uint8)
    img = read_dicom(make_dicom(tmp_path / "m1i.dcm", arr, bits_stored=8, photometric="MONOCHROME1", PresentationLUTShape="INVERSE"))
    np.testing.assert_allclose(img.pixels[0], [1.0, 0.0])


def test_signed_12bit_sign_extended_from_bits_stored(tmp_path):
    values = np.array([[-2048, -5, 0, 2047]], dtype=np.int16)
    stored = (values.astype(np.int32) & 0x0FFF).astype(np.uint16)  # 12-bit two's complement, high bits zero
    img = read_dicom(make_dicom(tmp_path / "sg.dcm", stored, bits_stored=12, signed=True))
    np.testing.assert_allclose(img.pixels[0], (values[0] + 2048) / 4095.0, atol=1e-6)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_transfer_syntax_decodes_losslessly(tmp_path, syntax):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 4096, size=(64, 48), dtype=np.uint16)
    path = make_dicom(tmp_path / "c.dcm", arr, bits_stored=12)
    ds = pydicom.dcmread(path)
    try:
        ds.compress(syntax, arr, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "")
    except RuntimeError as exc:  # encoder plugin missing in this environment
        pytest.skip(f"no encoder for {syntax.name}: {exc}")
    ds.save_as(path)
    assert str(pydicom.dcmread(path).file_meta.TransferSyntaxUID) == str(syntax)
    img = read_dicom(path)
    np.testing.assert_allclose(img.pixels, arr / 4095.0, atol=1e-7)


def test_missing_codec_names_file_and_package(tmp_path, monkeypatch):
    arr = np.zeros((4, 4), dtype=np.uint16)
    path = make_dicom(tmp_path / "j2k.dcm", arr, bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\x00" * 16])
    ds.save_as(path)

    def no_plugin(self):
        raise RuntimeError("Unable to decode the pixel data as the following plugins are unavailable: pylibjpeg")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_plugin))
    with pytest.raises(DicomReadError) as info:
        read_dicom(path)
    assert str(path) in str(info.value) and "pylibjpeg-openjpeg" in str(info.value)
    assert "pylibjpeg-libjpeg" in codec_hint("1.2.840.10008.1.2.4.70")


def test_unsupported_syntax_without_any_decoder(tmp_path):
    path = make_dicom(tmp_path / "hevc.dcm", np.zeros((4, 4), dtype=np.uint16), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.107"  # HEVC: no pydicom decoder
    ds.PixelData = encapsulate([b"\x00" * 16])
    ds.save_as(path)
    with pytest.raises(DicomReadError, match="hevc.dcm"):
        read_dicom(path)


def test_truncated_file_is_reported_with_its_name(tmp_path):
    path = make_dicom(tmp_path / "t.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), bits_stored=12)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(DicomReadError, match="t.dcm"):
        read_dicom(path)
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom at all")
    with pytest.raises(DicomReadError, match="junk.dcm"):
        read_dicom(tmp_path / "junk.dcm")


def test_metadata_recorded_and_patient_id_hashed(tmp_path):
    path = make_dicom(
        tmp_path / "meta.dcm", np.zeros((8, 6), dtype=np.uint16), bits_stored=12,
        PresentationIntentType="FOR PROCESSING", ImageLaterality="L", ViewPosition="MLO",
        ImagerPixelSpacing=[0.07, 0.07], Manufacturer="ACME", PatientID="SECRET-123",
    )
    img = read_dicom(path)
    m = img.meta
    assert (m.presentation_intent, m.laterality, m.view, m.manufacturer) == ("FOR PROCESSING", "L", "MLO", "ACME")
    assert m.pixel_spacing_mm == (0.07, 0.07)
    assert m.patient_hash == hash_patient_id("SECRET-123") and "SECRET" not in m.patient_hash
    assert m.shape == (8, 6)
