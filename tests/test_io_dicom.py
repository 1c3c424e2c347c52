"""DICOM series reading, checked against SimpleITK (GDCM) and pydicom on real files.

Bad-input cases are built in tmp_path from real files: copies, truncations, removed or
moved slices, renamed files, a text file and a SEG beside a series.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from napari_ssl.errors import NoImageFound
from napari_ssl.io import load_volume, load_volumes, write_itk_volume
from napari_ssl.io.dicom.series import load_dicom_volumes

DICOMDIR_TREE = Path(get_testdata_file("DICOMDIR")).parent
CT5N = DICOMDIR_TREE / "98892001" / "CT5N"     # 5 axial CT slices, 2.5 mm apart


# --- references (SimpleITK / pydicom, never the code under test) --------------------------------
def sitk_series(folder: Path):
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    img = reader.Execute()
    return img, sitk.GetArrayFromImage(img)


def assert_geometry_matches_itk(vol, img) -> None:
    np.testing.assert_allclose(vol.spacing[::-1], img.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    # Volume.direction columns are the z, y, x axes; ITK's are x, y, z.
    np.testing.assert_allclose(vol.direction[:, ::-1], np.reshape(img.GetDirection(), (3, 3)), atol=1e-5)


def pydicom_values(path) -> np.ndarray:
    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array.astype(np.float64)
    return arr * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def copy_series(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        shutil.copy(f, dst / f.name)
        os.chmod(dst / f.name, 0o644)
    return dst


# --- plain series ------------------------------------------------------------------------------
def test_ct_series_matches_simpleitk(dcmqi_dir):
    folder = dcmqi_dir / "ct-3slice"
    (vol,) = load_dicom_volumes(folder)
    img, ref = sitk_series(folder)
    np.testing.assert_array_equal(vol.array, ref)
    assert vol.array.dtype == np.int16          # HU fit: no float, no int32
    assert vol.units == "HU" and vol.modality == "CT"
    assert_geometry_matches_itk(vol, img)
    np.testing.assert_array_equal(vol.native_affine, vol.affine)
    first = pydicom.dcmread(folder / "01.dcm", stop_before_pixels=True)
    assert vol.series_instance_uid == first.SeriesInstanceUID
    assert vol.study_instance_uid == first.StudyInstanceUID
    assert vol.frame_of_reference_uid == first.FrameOfReferenceUID
    assert vol.patient_id == first.PatientID
    assert vol.num_files == 3 and vol.warnings == []
    # source order follows the array: z ascending along the normal (S for this axial series)
    z = [float(ds.ImagePositionPatient[2]) for ds in vol.source_datasets]
    assert z == sorted(z) and len(vol.source_paths) == 3
    assert all("PixelData" not in ds for ds in vol.source_datasets)
    assert [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in vol.source_paths] == \
        [ds.SOPInstanceUID for ds in vol.source_datasets]


def test_hu_rescale_against_pydicom():
    path = get_testdata_file("CT_small.dcm")
    (vol,) = load_dicom_volumes(path)
    np.testing.assert_array_equal(vol.array[0], pydicom_values(path))
    assert vol.array.dtype == np.int16 and vol.units == "HU"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert vol.spacing[1:] == pytest.approx([float(v) for v in ds.PixelSpacing])
    assert vol.origin == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    # single slice: step from the header, with a warning that says so
    assert vol.shape[0] == 1 and vol.spacing[0] == pytest.approx(float(ds.SpacingBetweenSlices))
    assert any("single slice" in w for w in vol.warnings)


def test_non_integral_rescale_gives_float32():
    path = get_testdata_file("MR2_J2KI.dcm")  # JPEG 2000, slope 3.77, intercept 6.1e-5
    (vol,) = load_dicom_volumes(path)
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array[0], pydicom_values(path), rtol=1e-6, atol=1e-3)


def test_float_rescale_series_is_converted_in_place(tmp_path, dcmqi_dir):
    """Per-slice non-integer rescales (as MR/PET write them): float32 values as pydicom computes
    them, read into the float volume itself (peak allocation about the float volume, not 1.5x)."""
    import tracemalloc

    folder = tmp_path / "float"
    folder.mkdir()
    src = [pydicom.dcmread(f) for f in sorted((dcmqi_dir / "ct-3slice").glob("*.dcm"))]
    series = generate_uid()
    for i in range(12):
        ds = src[i % 3].copy()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.InstanceNumber = series, i + 1
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], f"{-200 + 2.5 * i:.2f}"]
        ds.RescaleSlope, ds.RescaleIntercept = f"{0.5 + 0.25 * (i % 4)}", f"{-1024.5 + i}"
        ds.save_as(folder / f"{i:02d}.dcm")
    load_dicom_volumes(folder)  # warm-up: imports and caches outside the measurement
    tracemalloc.start()
    try:
        (vol,) = load_dicom_volumes(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert vol.array.dtype == np.float32
    for z, ds in enumerate(vol.source_datasets):
        np.testing.assert_allclose(vol.array[z], pydicom_values(vol.source_paths[z]), rtol=1e-6)
    assert vol.shape == (12, 512, 512)
    assert peak < 1.2 * vol.array.nbytes, f"peak {peak / vol.array.nbytes:.2f}x the float volume"


@pytest.mark.parametrize("name", [
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
    "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
])
def test_compressed_and_other_syntaxes_equal_uncompressed(name):
    ref = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    (vol,) = load_dicom_volumes(get_testdata_file(name))
    np.testing.assert_array_equal(vol.array[0], ref)
    assert vol.modality == "MR" and vol.units == ""


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm", "JPEG-LL.dcm", "JPEGLSNearLossless_16.dcm",
                                  "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_jpeg_family_against_pydicom(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    if int(ds.SamplesPerPixel) != 1:
        # colour images are not volumes: skipped, and nothing else is there
        with pytest.raises(NoImageFound):
            load_dicom_volumes(path)
        return
    (vol,) = load_dicom_volumes(path)
    np.testing.assert_array_equal(vol.array[0], ds.pixel_array.reshape(vol.shape[1:]))


@pytest.mark.parametrize("pair", [("693_J2KR.dcm", "693_UNCR.dcm"), ("MR2_J2KR.dcm", "MR2_UNCR.dcm")])
def test_jpeg2000_lossless_equals_uncompressed(pair):
    (j2k,) = load_dicom_volumes(get_testdata_file(pair[0]))
    (unc,) = load_dicom_volumes(get_testdata_file(pair[1]))
    np.testing.assert_array_equal(j2k.array, unc.array)
    np.testing.assert_allclose(unc.array[0], pydicom_values(get_testdata_file(pair[1])), rtol=1e-6)
    np.testing.assert_allclose(j2k.affine, unc.affine)


def test_undecodable_pixels_say_why():
    # pydicom's plugins cannot decode this 12-bit JPEG Extended file either
    with pytest.raises(NoImageFound, match="cannot decode"):
        load_dicom_volumes(get_testdata_file("JPEG-lossy.dcm"))


@pytest.mark.parametrize("name", ["emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm",
                                  "emri_small_jpeg_2k_lossless.dcm", "emri_small_big_endian.dcm"])
def test_multiframe_compressed_equals_uncompressed(name):
    (ref,) = load_dicom_volumes(get_testdata_file("emri_small.dcm"))
    (vol,) = load_dicom_volumes(get_testdata_file(name))
    expected = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array
    assert vol.shape == expected.shape == (10, 64, 64)
    np.testing.assert_array_equal(vol.array, ref.array)
    # no plane positions in this file: frames keep their stored order
    np.testing.assert_array_equal(vol.array, expected)
    assert vol.source_frames == list(range(1, 11))


# --- Enhanced multi-frame ---------------------------------------------------------------------
@pytest.mark.parametrize("case", ["23x38x3", "24x38x3"])
def test_enhanced_equals_single_frame(dcmqi_dir, case):
    (single,) = load_dicom_volumes(dcmqi_dir / case / "image")
    (multi,) = load_dicom_volumes(dcmqi_dir / case / "multiframe" / "mf.dcm")
    img, ref = sitk_series(dcmqi_dir / case / "image")
    np.testing.assert_array_equal(single.array, ref)
    assert_geometry_matches_itk(single, img)
    np.testing.assert_array_equal(multi.array, single.array)
    np.testing.assert_allclose(multi.affine, single.affine, atol=1e-4)
    assert multi.num_files == 1 and len(multi.source_datasets) == 1
    assert sorted(multi.source_frames) == [1, 2, 3]
    # frame numbers follow the positions stored in the per-frame functional groups
    ds = pydicom.dcmread(dcmqi_dir / case / "multiframe" / "mf.dcm", stop_before_pixels=True)
    normal = np.cross(*np.reshape(multi.direction[:, ::-1][:, :2].T, (2, 3)))
    z = [float(np.dot(ds.PerFrameFunctionalGroupsSequence[f - 1].PlanePositionSequence[0].ImagePositionPatient, normal))
         for f in multi.source_frames]
    assert z == sorted(z)


def test_enhanced_ct_against_pydicom_functional_groups():
    path = get_testdata_file("eCT_Supplemental.dcm")
    (vol,) = load_dicom_volumes(path)
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    pf = ds.PerFrameFunctionalGroupsSequence
    sh = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(sh.PlaneOrientationSequence[0].ImageOrientationPatient, float) \
        if "PlaneOrientationSequence" in sh else np.array(pf[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    pos = [np.array(pf[i].PlanePositionSequence[0].ImagePositionPatient, float) for i in range(len(pf))]
    order = np.argsort([p @ normal for p in pos])
    assert vol.source_frames == [int(i) + 1 for i in order]
    for z, i in enumerate(order):
        pvt = (pf[i] if "PixelValueTransformationSequence" in pf[i] else sh).PixelValueTransformationSequence[0]
        expected = frames[i] * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
        np.testing.assert_array_equal(vol.array[z], expected)
    assert vol.origin == pytest.approx(pos[order[0]])
    assert vol.spacing[0] == pytest.approx(abs((pos[order[1]] - pos[order[0]]) @ normal))
    meas = (pf[0] if "PixelMeasuresSequence" in pf[0] else sh).PixelMeasuresSequence[0]
    assert vol.spacing[1:] == pytest.approx([float(v) for v in meas.PixelSpacing])
    np.testing.assert_allclose(vol.direction[:, 2], iop[:3], atol=1e-6)   # along a row = array x
    np.testing.assert_allclose(vol.direction[:, 1], iop[3:], atol=1e-6)   # down a column = array y
    assert vol.units == "HU" and vol.modality == "CT"


# --- trees, grouping, non-images ---------------------------------------------------------------
def test_dicomdir_tree_groups_series():
    vols = load_dicom_volumes(DICOMDIR_TREE)
    uids = {v.series_instance_uid for v in vols}
    # every image series pydicom finds in the tree is there, and nothing else
    expected = set()
    for root, _, files in os.walk(DICOMDIR_TREE):
        for f in files:
            try:
                ds = pydicom.dcmread(os.path.join(root, f), stop_before_pixels=True)
            except pydicom.errors.InvalidDicomError:
                continue
            if "SeriesInstanceUID" in ds and ds.get("Rows"):   # TINY_ALPHA: headers without pixels
                expected.add(ds.SeriesInstanceUID)
    assert uids == expected
    ct5 = [v for v in vols if v.path == str(CT5N)]
    assert len(ct5) == 1 and ct5[0].shape == (5, 16, 16)
    img, ref = sitk_series(CT5N)
    np.testing.assert_array_equal(ct5[0].array, ref)
    assert_geometry_matches_itk(ct5[0], img)
    # MR700: seven radial slices in one series -> seven single-slice stacks, each told why
    radial = [v for v in vols if "MR700" in v.path]
    assert len(radial) == 7 and all(v.shape[0] == 1 for v in radial)
    assert all(any("orientations" in w for w in v.warnings) for v in radial)
    assert not any("TINY_ALPHA" in v.path for v in vols)


def test_two_series_in_one_tree_and_junk_beside(dcmqi_dir, tmp_path):
    copy_series(dcmqi_dir / "ct-3slice", tmp_path / "patient1" / "study" / "ct")
    copy_series(dcmqi_dir / "23x38x3" / "image", tmp_path / "patient2" / "s1")
    (tmp_path / "patient1" / "study" / "ct" / "notes.txt").write_text("not an image\n")
    (tmp_path / "patient2" / "s1" / "README").write_bytes(b"\x00" * 300)
    shutil.copy(dcmqi_dir / "liver.dcm", tmp_path / "patient1" / "study" / "seg.dcm")
    vols = load_dicom_volumes(tmp_path)
    assert sorted(v.shape for v in vols) == [(3, 38, 23), (3, 512, 512)]
    assert len({v.series_instance_uid for v in vols}) == 2
    assert all(v.warnings == [] for v in vols)  # junk and the SEG are skipped quietly
    big = next(v for v in vols if v.shape[1] == 512)
    np.testing.assert_array_equal(big.array, sitk_series(dcmqi_dir / "ct-3slice")[1])


def test_seg_alone_and_empty_folder_raise(dcmqi_dir, tmp_path):
    with pytest.raises(NoImageFound, match="without an image"):
        load_dicom_volumes(dcmqi_dir / "liver.dcm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImageFound, match="no DICOM image"):
        load_dicom_volumes(tmp_path / "empty")
    with pytest.raises(NoImageFound):
        load_volumes(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    with pytest.raises(NoImageFound):
        load_dicom_volumes(tmp_path / "text")


def test_shuffled_renamed_files_sort_by_position(dcmqi_dir, tmp_path):
    src = sorted((dcmqi_dir / "ct-3slice").iterdir())
    names = ["zz.dcm", "aa", "mm.dcm"]           # file-name order is none of the position order
    for f, name, inst in zip(src, names, [7, 2, 9]):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = inst                 # misleading instance numbers too
        ds.save_as(tmp_path / name)
    (vol,) = load_dicom_volumes(tmp_path)
    img, ref = sitk_series(dcmqi_dir / "ct-3slice")
    np.testing.assert_array_equal(vol.array, ref)
    assert_geometry_matches_itk(vol, img)
    z = [float(ds.ImagePositionPatient[2]) for ds in vol.source_datasets]
    assert z == sorted(z)


def test_truncated_file_is_named_and_rest_loads(dcmqi_dir, tmp_path, caplog):
    folder = copy_series(CT5N, tmp_path / "ct")
    victim = sorted(folder.iterdir())[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 200])
    with caplog.at_level(logging.WARNING):
        (vol,) = load_dicom_volumes(folder)
    assert vol.shape == (4, 16, 16)
    assert any(victim.name in w and "truncated" in w for w in vol.warnings)
    assert victim.name in caplog.text
    # the other four slices are intact
    good = [p for p in sorted(CT5N.iterdir()) if p.name != victim.name]
    expected = {float(pydicom.dcmread(p).ImagePositionPatient[2]): pydicom_values(p) for p in good}
    for z, ds in enumerate(vol.source_datasets):
        np.testing.assert_array_equal(vol.array[z], expected[float(ds.ImagePositionPatient[2])])


def test_corrupt_header_is_named(dcmqi_dir, tmp_path):
    folder = copy_series(dcmqi_dir / "ct-3slice", tmp_path / "ct")
    bad = folder / "02.dcm"
    raw = bytearray(bad.read_bytes())
    bad.write_bytes(bytes(raw[:300]))  # cut inside the header
    (vol,) = load_dicom_volumes(folder)
    assert vol.shape[0] == 2
    assert any("02.dcm" in w and "truncated" in w for w in vol.warnings)


def test_missing_slice_gives_gap_warning(tmp_path):
    folder = copy_series(CT5N, tmp_path / "ct")
    by_z = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    by_z[2].unlink()
    (vol,) = load_dicom_volumes(folder)
    assert vol.shape[0] == 4
    assert any("missing slice" in w for w in vol.warnings)
    assert vol.spacing[0] == pytest.approx(2.5)


def test_uneven_spacing_warning(tmp_path):
    folder = copy_series(CT5N, tmp_path / "ct")
    by_z = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    ds = pydicom.dcmread(by_z[1])
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.7
    ds.save_as(by_z[1])
    (vol,) = load_dicom_volumes(folder)
    assert vol.shape[0] == 5
    assert any("uneven" in w for w in vol.warnings)
    assert not any("missing" in w for w in vol.warnings)


def test_mixed_orientations_split_into_stacks(tmp_path):
    folder = copy_series(CT5N, tmp_path / "ct")
    moved = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(moved)
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]   # a sagittal slice in the same series
    ds.save_as(moved)
    vols = load_dicom_volumes(folder)
    assert sorted(v.shape[0] for v in vols) == [1, 4]
    assert all(any("orientations" in w for w in v.warnings) for v in vols)
    sag = next(v for v in vols if v.shape[0] == 1)
    np.testing.assert_allclose(sag.direction[:, 2], [0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(sag.direction[:, 1], [0, 0, -1], atol=1e-6)


def test_repeated_positions_split_by_echo(tmp_path):
    folder = copy_series(CT5N, tmp_path / "ct")
    for i, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = generate_uid()
        ds.EchoNumbers = 2
        ds.save_as(tmp_path / "ct" / f"echo2_{i}.dcm")
    vols = load_dicom_volumes(folder)
    assert [v.shape for v in vols] == [(5, 16, 16), (5, 16, 16)]
    assert all(any("echo" in w for w in v.warnings) for v in vols)


# --- same scan as DICOM and NIfTI --------------------------------------------------------------
@pytest.mark.parametrize("flip_axes,perm", [((False, False, False), (0, 1, 2)), ((True, False, True), (2, 0, 1))])
def test_dicom_and_nifti_of_same_scan_agree(dcmqi_dir, tmp_path, flip_axes, perm):
    img, _ = sitk_series(dcmqi_dir / "ct-3slice")
    img = sitk.PermuteAxes(sitk.Flip(img, list(flip_axes)), list(perm))
    nii = tmp_path / "ct.nii.gz"
    sitk.WriteImage(img, str(nii))
    from_dicom = load_volume(dcmqi_dir / "ct-3slice", canonical=True)
    from_nifti = load_volume(nii, canonical=True)
    np.testing.assert_array_equal(np.asarray(from_nifti.array), np.asarray(from_dicom.array))
    np.testing.assert_allclose(from_nifti.spacing, from_dicom.spacing, atol=1e-4)
    np.testing.assert_allclose(from_nifti.affine, from_dicom.affine, atol=1e-3)


def test_write_read_roundtrip_keeps_geometry(dcmqi_dir, tmp_path):
    (vol,) = load_dicom_volumes(dcmqi_dir / "ct-3slice")
    write_itk_volume(vol.array, vol.affine, tmp_path / "v.nrrd")
    back = sitk.ReadImage(str(tmp_path / "v.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), vol.array)
    np.testing.assert_allclose(back.GetOrigin(), vol.origin, atol=1e-4)
