"""The reader's error boundary, lazy frames, caps, timing and kinds on synthetic files."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from tests.conftest import real_file, region_item, write_us
from usreview.dicom import ImageKind, read
from usreview.errors import (
    CorruptPixelDataError,
    ImageTooLargeError,
    InputError,
    NotDicomError,
    NotUltrasoundError,
    UnsupportedTransferSyntaxError,
)


def test_not_dicom(tmp_path: Path) -> None:
    for name, content in {
        "empty": b"",
        "text": b"hello\n" * 50,
        "noise": bytes(range(256)) * 4,
    }.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(NotDicomError):
            read(path)
    with pytest.raises(NotDicomError, match="no such file"):
        read(tmp_path / "missing.dcm")
    with pytest.raises(NotDicomError):
        read(tmp_path)  # a folder


def test_not_ultrasound(tmp_path: Path) -> None:
    frames = np.zeros((1, 8, 8), np.uint8)
    path = write_us(tmp_path / "ct.dcm", frames, sop_class=CTImageStorage)
    with pytest.raises(NotUltrasoundError, match="CT Image Storage"):
        read(path)


def test_truncated_native_pixel_data(
    tmp_path: Path, gradient_cine: tuple[Path, np.ndarray]
) -> None:
    path, _frames = gradient_cine
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptPixelDataError, match="truncated"):
        read(cut)


def test_a_file_cut_in_its_header_says_so(
    tmp_path: Path, gradient_cine: tuple[Path, np.ndarray]
) -> None:
    # Before: "not an ultrasound image: SOP class missing" and "the file has no pixel data".
    path, _frames = gradient_cine
    data = path.read_bytes()
    for size, error, says in [
        (132, NotDicomError, "the file ends before its DICOM header (truncated?)"),
        (700, CorruptPixelDataError, "the file ends before any pixel data (truncated"),
    ]:
        cut = tmp_path / f"cut{size}.dcm"
        cut.write_bytes(data[:size])
        with pytest.raises(error, match=re.escape(says)):
            read(cut)


def test_errors_leave_out_pydicom_settings_nobody_can_change(tmp_path: Path) -> None:
    # A UL element of 2 bytes: pydicom's message ends "To replace this error with a warning
    # set pydicom.config.convert_wrong_length_to_UN = True."
    path = write_us(tmp_path / "bad.dcm", np.zeros((1, 8, 8), np.uint8))
    data = path.read_bytes()
    element = b"\x18\x00\x16\x60UL\x02\x00\x00\x00"  # (0018,6016) UL, length 2
    at = data.index(b"\xe0\x7f\x10\x00")  # before the pixel data: elements stay sorted
    path.write_bytes(data[:at] + element + data[at:])
    with pytest.raises(NotDicomError) as caught:
        read(path)
    message = str(caught.value)
    assert "(0018,6016)" in message and "pydicom.config" not in message
    assert message.endswith("according to VR 'UL'.")


def test_declared_size_over_cap_is_refused_before_decoding(tmp_path: Path) -> None:
    """A tiny RLE file that declares 1000 frames of 65535 x 65535 x 3 x 16 bits."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = RLELossless
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 1000
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 1
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([b"\x01\x00\x00\x00" + b"\x00" * 60 + b"\x00\x00"])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "bomb.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 2048
    with pytest.raises(ImageTooLargeError, match="over the cap"):
        read(path)
    small = write_us(tmp_path / "small.dcm", np.zeros((2, 64, 64), np.uint8))
    assert read(small, max_decoded_bytes=2 * 64 * 64).number_of_frames == 2
    with pytest.raises(ImageTooLargeError):
        read(small, max_decoded_bytes=2 * 64 * 64 - 1)


def test_unsupported_transfer_syntax_names_itself(tmp_path: Path) -> None:
    path = write_us(
        tmp_path / "mpeg.dcm",
        np.zeros((1, 8, 8), np.uint8),
        transfer_syntax="1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile
        encapsulated_frames=[b"\x00" * 64],
    )
    with pytest.raises(UnsupportedTransferSyntaxError, match="MPEG2"):
        read(path)


def test_garbled_compressed_frame_is_corrupt_pixel_data(tmp_path: Path) -> None:
    path = write_us(
        tmp_path / "bad-rle.dcm",
        np.zeros((1, 8, 8), np.uint8),
        transfer_syntax=RLELossless,
        encapsulated_frames=[b"\xff" * 64],
    )
    instance = read(path)
    with pytest.raises(CorruptPixelDataError, match="frame 0"):
        instance.frame(0)


def test_compressed_frames_decode_alone(tmp_path: Path) -> None:
    """Frame 50 of a 100-frame RLE cine decodes although frame 3 is garbage: only it was read."""
    encoder = get_encoder(RLELossless)
    frames = np.stack([np.full((16, 16), k, np.uint8) for k in range(100)])
    encoded = [
        encoder.encode(
            frames[k].tobytes(),
            rows=16,
            columns=16,
            samples_per_pixel=1,
            bits_allocated=8,
            bits_stored=8,
            pixel_representation=0,
            photometric_interpretation="MONOCHROME2",
            number_of_frames=1,
        )
        for k in range(100)
    ]
    encoded[3] = b"\xff" * len(encoded[3])
    path = write_us(
        tmp_path / "rle.dcm", frames, transfer_syntax=RLELossless, encapsulated_frames=encoded
    )
    instance = read(path)
    assert int(instance.frame(50)[0, 0]) == 50
    assert int(instance.frame(-1)[0, 0]) == 99
    with pytest.raises(CorruptPixelDataError):
        instance.frame(3)
    with pytest.raises(IndexError):
        instance.frame(100)


def test_native_frames_are_memory_mapped_slices(gradient_cine: tuple[Path, np.ndarray]) -> None:
    path, frames = gradient_cine
    instance = read(path)
    np.testing.assert_array_equal(instance.frame(7), frames[7])
    np.testing.assert_array_equal(instance.frames(), frames)
    assert instance.kinds == (ImageKind.BMODE, ImageKind.CINE)
    assert instance.timing.frame_time_ms == 40.0


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_sixteen_bit_in_other_byte_orders(tmp_path: Path, syntax: str) -> None:
    values = (np.arange(2 * 10 * 12, dtype=np.uint16) * 97).reshape(2, 10, 12)
    ds = pydicom.dcmread(write_us(tmp_path / "w.dcm", values))
    ds.file_meta.TransferSyntaxUID = syntax
    big = syntax == ExplicitVRBigEndian
    if big:
        ds.PixelData = values.astype(">u2").tobytes()
    out = tmp_path / "o.dcm"
    pydicom.dcmwrite(
        out,
        ds,
        implicit_vr=syntax == ImplicitVRLittleEndian,
        little_endian=not big,
        force_encoding=True,
    )
    instance = read(out)
    np.testing.assert_array_equal(instance.frames(), values)
    assert instance.frame(1).dtype.byteorder in "=|<"


def test_bare_dataset_without_preamble_is_read_with_a_warning(tmp_path: Path) -> None:
    path = write_us(tmp_path / "a.dcm", np.ones((1, 8, 8), np.uint8))
    ds = pydicom.dcmread(path)
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)  # no preamble, no meta
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(
        buffer.getvalue()[132:] if buffer.getvalue()[128:132] == b"DICM" else buffer.getvalue()
    )
    raw = bare.read_bytes()
    # Strip the file meta group too, leaving a bare explicit-VR dataset.
    start = raw.find(b"\x08\x00")
    bare.write_bytes(raw[start:])
    instance = read(bare)
    assert instance.number_of_frames == 1
    assert any("preamble" in w or "Transfer Syntax" in w for w in instance.warnings)


def test_bytes_that_cannot_start_a_dataset_are_refused_without_a_forced_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forced: list[bool] = []
    real = pydicom.dcmread

    def spy(*args: Any, **kwargs: Any) -> Any:
        forced.append(bool(kwargs.get("force")))
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", spy)
    zeros = tmp_path / "zeros.dcm"  # a forced read walks it element by empty element
    zeros.write_bytes(bytes(4 << 20))
    text = tmp_path / "notes.dcm"
    text.write_bytes(b"patient notes " * 100)
    for path in (zeros, text):
        with pytest.raises(NotDicomError, match="not a DICOM file"):
            read(path)
    assert forced == [False, False]


def test_pydicom_warnings_are_kept_not_raised() -> None:
    instance = read(real_file("deid-data__GREYSCALE_IMAGE.dcm"))
    assert any("exceeds the maximum length" in w for w in instance.warnings)


def test_timing_sources(tmp_path: Path) -> None:
    frames = np.zeros((4, 8, 8), np.uint8)
    vec = write_us(
        tmp_path / "v.dcm",
        frames,
        FrameTimeVector=[0, 20, 30, 25],
        FrameIncrementPointer=0x00181065,
    )
    timing = read(vec).timing
    assert timing.source == "FrameTimeVector"
    assert timing.offsets_ms is not None and timing.offsets_ms.tolist() == [0, 20, 50, 75]
    assert timing.frame_time_ms == pytest.approx(25.0)
    rate = pydicom.dcmread(write_us(tmp_path / "r.dcm", frames))
    del rate.FrameTime
    rate.FrameIncrementPointer = 0x00180040
    rate.CineRate = 50
    rate.save_as(tmp_path / "r2.dcm")
    timing = read(tmp_path / "r2.dcm").timing
    assert (timing.source, timing.frame_time_ms) == ("CineRate", 20.0)
    bad = write_us(tmp_path / "b.dcm", frames, FrameTimeVector=[0, 20])
    instance = read(bad)
    assert instance.timing.source == "FrameTime"  # the vector of 2 values for 4 frames is ignored
    assert not any("Frame Time Vector" in w for w in instance.warnings)


@pytest.mark.parametrize(
    ("regions", "image_type", "expected"),
    [
        ([region_item()], None, {"bmode"}),
        ([region_item(RegionSpatialFormat=2)], None, {"mmode"}),
        (
            [region_item(), region_item(RegionSpatialFormat=3, RegionDataType=3)],
            None,
            {"bmode", "pw_doppler", "duplex"},
        ),
        ([region_item(RegionSpatialFormat=3, RegionDataType=4)], None, {"cw_doppler"}),
        ([region_item(), region_item(RegionDataType=2)], None, {"bmode", "color_flow"}),
        (
            [region_item(), region_item(RegionDataType=2)],
            ["ORIGINAL", "PRIMARY", "", "0101"],
            {"bmode", "power_doppler"},
        ),
        (
            [region_item(), region_item(RegionSpatialFormat=4, RegionDataType=10)],
            None,
            {"bmode", "ecg"},
        ),
        (
            [],
            ["ORIGINAL", "PRIMARY", "VASCULAR", "0019"],
            {"bmode", "pw_doppler", "color_flow", "duplex"},
        ),
        ([region_item()], ["ORIGINAL", "PRIMARY", "HARMONIC"], {"bmode", "harmonic"}),
    ],
)
def test_kinds(
    tmp_path: Path, regions: list[Dataset], image_type: list[str] | None, expected: set[str]
) -> None:
    extra = {"ImageType": image_type} if image_type else {}
    path = write_us(tmp_path / "k.dcm", np.zeros((1, 48, 64), np.uint8), regions=regions, **extra)
    assert {k.value for k in read(path).kinds} == expected


_FUZZ_SOURCES = [
    "pydicom-data__OBXXXX1A_rle_2frame.dcm",
    "dcm4che__jpeg-ls-Palette.dcm",
    "pydicom-data__US1_J2KI.dcm",
    "pydicom__ExplVR_BigEnd.dcm",
    "pydicom-data__gdcm-US-ALOKA-16.dcm",
    "pydicom-data__JPGLosslessP14SV1_1s_1f_8b.dcm",
]


@st.composite
def _mutations(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(_FUZZ_SOURCES))
    data = bytearray(real_file(name).read_bytes())
    # Mutate mostly in the header and the start of the pixel data, where parsers live.
    for _ in range(draw(st.integers(1, 12))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "byte", "cut", "insert", "u32"]))
        hot = min(len(data), 4096)
        pos = draw(st.integers(0, hot - 1) | st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[pos : pos + 4] = draw(
                st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f"])
            )
    return name, bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation=_mutations())
def test_fuzzed_real_files_raise_only_input_errors(
    tmp_path_factory: pytest.TempPathFactory, mutation: tuple[str, bytes]
) -> None:
    _name, data = mutation
    path = tmp_path_factory.mktemp("fuzz") / "f.dcm"
    path.write_bytes(data)
    try:
        instance = read(path, max_decoded_bytes=256 * 1024**2)
        for index in {0, instance.number_of_frames - 1}:
            instance.display_frame(index)
    except InputError:
        pass


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.5.1.4.1.1.6.1", True),
        ("2.25." + "9" * 59, True),  # 64 characters
        ("2.25." + "9" * 60, False),  # 65
        ("", False),
        ("1..2", False),
        ("1.2.", False),
        (".1.2", False),
        ("1.2\n", False),
        ("../../escaped", False),
        ("1.2.3\x00", False),
        ("１.２", False),  # full-width digits are not DICOM's
        (123, False),
        (None, False),
    ],
)
def test_is_uid(value: object, valid: bool) -> None:
    from usreview.dicom.header import is_uid

    assert is_uid(value) is valid


def test_a_frame_that_does_not_decode_says_why_each_decoder_refused(tmp_path: Path) -> None:
    # pydicom's message is "... raised by all available plugins:" then one line per
    # decoder; only the first line was kept, which says nothing.
    data = bytearray(real_file("dcm4che__US-PAL-8-10x-echo.dcm").read_bytes())
    at = len(data) - len(data) // 10  # inside the last frame's RLE segments
    data[at : at + 400] = b"\x01" * 400
    path = tmp_path / "damaged.dcm"
    path.write_bytes(bytes(data))
    instance = read(path)
    with pytest.raises(CorruptPixelDataError) as caught:
        instance.frame(instance.number_of_frames - 1)
    message = str(caught.value)
    assert message.startswith("frame 9 cannot be decoded (RLE Lossless): Unable to decode")
    assert "pydicom: The amount of decoded RLE segment data doesn't match" in message
    assert "\n" not in message
