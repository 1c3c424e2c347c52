"""The napari side: npe2 manifest, reader, sample data, in real viewers (run under Xvfb: scripts/test.sh).

Geometry is checked against SimpleITK / pydicom, not against napari_ssl: a voxel's napari world
coordinate (translate + scale * index, axes z, y, x = S, P, L) must be the physical point where
SimpleITK finds the same value.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SimpleITK = pytest.importorskip("SimpleITK")
sitk = SimpleITK
REPO = Path(__file__).resolve().parents[1]
SAMPLE_CT = REPO / "resources" / "sample_ct"
SAMPLE_MR = REPO / "resources" / "sample_mr"
PLUGIN = "napari-ssl"


# --- helpers --------------------------------------------------------------------------------
def _by_type(layers, kind):
    return [ly for ly in layers if type(ly).__name__.lower() == kind]


def _world_to_lps(layer, idx):
    world = np.asarray(layer.translate, float) + np.asarray(layer.scale, float) * np.asarray(idx, float)
    return tuple(float(v) for v in world[::-1])  # (z, y, x) = (S, P, L) -> (L, P, S)


def _assert_matches_itk(layer, img, n=200, seed=0, compare=lambda a, b: a == b):
    """Random voxels of `layer` hold the value SimpleITK finds at the same physical point."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(layer.data.shape)
    size = np.asarray(img.GetSize())
    checked = 0
    for idx in (rng.integers(0, shape) for _ in range(n)):
        itk_idx = img.TransformPhysicalPointToContinuousIndex(_world_to_lps(layer, idx))
        rounded = np.rint(itk_idx).astype(int)
        assert np.allclose(itk_idx, rounded, atol=1e-3), f"voxel {idx} falls between SimpleITK voxels {itk_idx}"
        assert np.all(rounded >= 0) and np.all(rounded < size), f"voxel {idx} maps outside the image: {rounded}"
        a, b = layer.data[tuple(idx)], img.GetPixel([int(v) for v in rounded])
        assert compare(a, b), f"voxel {tuple(idx)}: layer {a} vs SimpleITK {b}"
        checked += 1
    assert checked == n


def _canonical_spacing(img):
    """SimpleITK spacing reordered to napari-ssl's canonical axes (z~S, y~P, x~L)."""
    d = np.asarray(img.GetDirection()).reshape(3, 3)  # columns: i, j, k axes in LPS
    sp = np.asarray(img.GetSpacing())
    return tuple(float(sp[int(np.argmax(np.abs(d[comp])))]) for comp in (2, 1, 0))


def _dicom_series(folder):
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return r.Execute()


@pytest.fixture
def notes():
    """napari's notification records during the test, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()

    def get():
        return [(str(n.severity), str(n.message)) for n in notification_manager.records]

    return get


# --- manifest and reader choice -------------------------------------------------------------
def test_manifest_is_valid_and_discovered():
    from npe2 import PluginManager, PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    manifest.validate_imports()
    assert {s.key for s in manifest.contributions.sample_data} == {"hippocampus_mr", "ct_liver_seg"}
    pm = PluginManager.instance()
    pm.discover()
    assert PLUGIN in pm

    def readers(p):
        return {r.plugin_name for r in pm.iter_compatible_readers([p])}

    for name in ("a.dcm", "b.nii", "c.nii.gz", "d.nrrd", "e.nhdr", "f.mha", "g.mhd", "DICOMDIR", "IM0001",
                 "1.2.840.113619.2.55.3.1"):
        assert PLUGIN in readers(f"/data/{name}"), name
    assert PLUGIN in readers(str(REPO))  # folders
    assert PLUGIN not in readers("/data/photo.png")  # not claiming what napari reads itself


def test_get_reader_declines_what_it_cannot_read(tmp_path):
    from napari_ssl._napari.reader import napari_get_reader

    text = tmp_path / "README"
    text.write_text("not an image")
    png_dir = tmp_path / "pngs"
    png_dir.mkdir()
    (png_dir / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    extensionless = tmp_path / "IM0001"
    shutil.copy(SAMPLE_CT / "ct-3slice" / "02.dcm", extensionless)
    assert napari_get_reader(str(text)) is None
    assert napari_get_reader(str(png_dir)) is None
    assert napari_get_reader(str(tmp_path / "missing.dcm")) is None
    assert callable(napari_get_reader(str(extensionless)))
    assert callable(napari_get_reader(str(SAMPLE_CT / "ct-3slice")))
    assert callable(napari_get_reader([str(SAMPLE_MR / "hippocampus_320_image.nii.gz")]))


# --- samples in a real viewer ---------------------------------------------------------------
def test_sample_mr_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "hippocampus_mr")
    (image,), (labels,) = _by_type(layers, "image"), _by_type(layers, "labels")
    img = sitk.ReadImage(str(SAMPLE_MR / "hippocampus_320_image.nii.gz"))
    lab = sitk.ReadImage(str(SAMPLE_MR / "hippocampus_320_labels.nii.gz"))
    assert sorted(image.data.shape) == sorted(img.GetSize())
    assert image.scale == pytest.approx(_canonical_spacing(img))
    assert labels.data.shape == image.data.shape
    assert tuple(labels.scale) == tuple(image.scale) and tuple(labels.translate) == tuple(image.translate)
    _assert_matches_itk(image, img)
    _assert_matches_itk(labels, lab, seed=1)
    assert set(np.unique(labels.data)) == {0, 1, 2}
    assert labels.metadata["napari_ssl"]["segment_names"] == {1: "anterior", 2: "posterior"}
    names = dict(zip(labels.features["index"], labels.features["name"]))
    assert names[1] == "anterior" and names[2] == "posterior"
    # metadata affine maps (z, y, x) indices to LPS exactly where SimpleITK puts them
    affine = np.asarray(image.metadata["napari_ssl"]["affine"])
    for idx in ([0, 0, 0], [5, 10, 20], list(np.asarray(image.data.shape) - 1)):
        lps = affine @ np.r_[idx, 1.0]
        itk_idx = img.TransformPhysicalPointToIndex(tuple(lps[:3]))
        assert image.data[tuple(idx)] == img.GetPixel(itk_idx)
    # anterior hippocampus (label 1) lies anterior to (above, on screen) the posterior one
    ys = [np.nonzero(labels.data == v)[1].mean() for v in (1, 2)]
    assert ys[0] < ys[1]
    assert image.colormap.name == "gray"
    lo, hi = image.contrast_limits
    assert np.percentile(image.data, 0.1) <= lo < hi <= image.data.max()


def test_sample_ct_with_seg_in_viewer(make_napari_viewer, dcmqi_dir):
    import pydicom

    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "ct_liver_seg")
    (ct,), (liver,) = _by_type(layers, "image"), _by_type(layers, "labels")
    series = _dicom_series(SAMPLE_CT / "ct-3slice")
    assert ct.data.shape == (3, 512, 512)
    assert ct.scale == pytest.approx(_canonical_spacing(series), abs=1e-4)
    assert ct.scale[1] == pytest.approx(float(pydicom.dcmread(SAMPLE_CT / "ct-3slice" / "01.dcm").PixelSpacing[0]))
    _assert_matches_itk(ct, series)  # HU after rescale, same physical place
    assert ct.metadata["napari_ssl"]["modality"] == "CT" and ct.metadata["napari_ssl"]["units"] == "HU"
    assert tuple(ct.contrast_limits) == (-160.0, 240.0)
    # the liver mask: same grid as the CT, and where the dcmqi labelmap puts the liver
    assert liver.data.shape == ct.data.shape
    assert tuple(liver.scale) == tuple(ct.scale) and tuple(liver.translate) == tuple(ct.translate)
    assert set(np.unique(liver.data)) == {0, 1}
    labelmap = sitk.ReadImage(str(dcmqi_dir / "liver_seg.nrrd"))
    _assert_matches_itk(liver, labelmap, n=400, compare=lambda a, b: bool(a) == bool(b))
    assert int((liver.data > 0).sum()) == int((sitk.GetArrayFromImage(labelmap) > 0).sum())
    meta = liver.metadata["napari_ssl"]
    assert meta["series_instance_uid"] == ct.metadata["napari_ssl"]["series_instance_uid"]
    assert list(meta["segment_names"].values()) == ["Liver"]
    # the liver is on the patient's right: the left half of the axial image
    xs = np.nonzero(liver.data)[2]
    assert xs.mean() < liver.data.shape[2] / 2


# --- reader paths -----------------------------------------------------------------------------
def test_reader_paths_match_simpleitk(make_napari_viewer, hippo_dir, dcmqi_dir, tmp_path, notes):
    import pydicom

    viewer = make_napari_viewer()
    # a DICOM folder
    (ct,) = viewer.open(str(SAMPLE_CT / "ct-3slice"), plugin=PLUGIN)
    series = _dicom_series(SAMPLE_CT / "ct-3slice")
    assert ct.scale == pytest.approx(_canonical_spacing(series), abs=1e-4)
    _assert_matches_itk(ct, series, n=50)
    header = pydicom.dcmread(SAMPLE_CT / "ct-3slice" / "01.dcm", stop_before_pixels=True)
    assert ct.name == "CT ct-3slice"  # modality + folder: the series has no SeriesDescription
    for ident in (str(header.PatientName), str(header.PatientID)):
        assert not ident or ident not in ct.name
    # one DICOM file, and the same file with no extension
    one = SAMPLE_CT / "ct-3slice" / "02.dcm"
    noext = tmp_path / "IM0002"
    shutil.copy(one, noext)
    for path in (one, noext):
        (single,) = viewer.open(str(path), plugin=PLUGIN)
        img = sitk.ReadImage(str(one))
        assert single.data.shape == (1, 512, 512)
        assert single.scale[1:] == pytest.approx(_canonical_spacing(img)[1:])
        _assert_matches_itk(single, img, n=50)
    # NIfTI and NRRD
    nifti = hippo_dir / "images" / "hippocampus_001.nii.gz"
    nrrd = dcmqi_dir / "liver_seg.nrrd"
    for path in (nifti, nrrd):
        (layer,) = viewer.open(str(path), plugin=PLUGIN)
        img = sitk.ReadImage(str(path))
        assert layer.scale == pytest.approx(_canonical_spacing(img))
        assert layer.metadata["napari_ssl"]["series_instance_uid"] is None
        _assert_matches_itk(layer, img, n=50)
    # a DICOM-SEG file on its own lands exactly on the CT layer opened above
    (seg,) = viewer.open(str(SAMPLE_CT / "liver.dcm"), plugin=PLUGIN)
    assert type(seg).__name__ == "Labels"
    z, y, x = (int(np.median(a)) for a in np.nonzero(seg.data))
    world = np.asarray(seg.translate) + np.asarray(seg.scale) * (z, y, x)
    ct_idx = (world - np.asarray(ct.translate)) / np.asarray(ct.scale)
    assert np.allclose(ct_idx, np.rint(ct_idx), atol=1e-3)
    assert not any(level == "error" for level, _ in notes())


def test_dicomdir_opens_its_series(make_napari_viewer):
    from pydicom.data import get_testdata_file
    from pydicom.fileset import FileSet

    dicomdir = get_testdata_file("DICOMDIR")
    listed = {inst.SeriesInstanceUID for inst in FileSet(dicomdir)}
    viewer = make_napari_viewer()
    layers = viewer.open(dicomdir, plugin=PLUGIN)
    opened = {ly.metadata["napari_ssl"]["series_instance_uid"] for ly in layers}
    assert listed <= opened


def test_same_scan_as_dicom_and_as_flipped_permuted_nifti(make_napari_viewer, tmp_path):
    series = _dicom_series(SAMPLE_CT / "ct-3slice")
    # same voxels and physical geometry, stored in another order (x/y swapped, two axes reversed)
    other = sitk.Flip(sitk.PermuteAxes(series, [1, 0, 2]), [True, False, True])
    assert sitk.GetArrayViewFromImage(other).shape != sitk.GetArrayViewFromImage(series).shape or \
        not np.array_equal(sitk.GetArrayViewFromImage(other), sitk.GetArrayViewFromImage(series))
    nifti = tmp_path / "same_scan.nii.gz"
    sitk.WriteImage(other, str(nifti))
    viewer = make_napari_viewer()
    (from_dicom,) = viewer.open(str(SAMPLE_CT / "ct-3slice"), plugin=PLUGIN)
    (from_nifti,) = viewer.open(str(nifti), plugin=PLUGIN)
    assert from_nifti.data.shape == from_dicom.data.shape
    assert np.array_equal(np.asarray(from_nifti.data), np.asarray(from_dicom.data))
    assert from_nifti.scale == pytest.approx(from_dicom.scale, abs=1e-4)
    assert from_nifti.translate == pytest.approx(from_dicom.translate, abs=1e-3)


def test_bad_input_gives_a_notification_not_a_crash(make_napari_viewer, tmp_path, notes):
    viewer = make_napari_viewer()
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "notes.txt").write_text("no scan here")
    for folder in (empty, texts):
        assert viewer.open(str(folder), plugin=PLUGIN) == []
    errors = [m for level, m in notes() if level == "error"]
    assert len(errors) == 2 and all(re.search(r"no (DICOM )?image found under", m) for m in errors), errors
    assert len(viewer.layers) == 0
    # a truncated slice: named in a warning, the rest of the series opens
    broken = tmp_path / "broken"
    shutil.copytree(SAMPLE_CT / "ct-3slice", broken)
    data = (broken / "03.dcm").read_bytes()
    (broken / "03.dcm").write_bytes(data[: len(data) // 2])
    (layer,) = viewer.open(str(broken), plugin=PLUGIN)
    assert layer.data.shape == (2, 512, 512)
    warnings = [m for level, m in notes() if level == "warning"]
    assert any("03.dcm" in m for m in warnings), warnings


def test_cropped_seg_opens_on_the_full_grid_of_the_open_series(make_napari_viewer, dcmqi_dir, tmp_path):
    """A SEG whose frames are cropped to the liver (as 3D Slicer / dcmqi write them), opened on its own
    from a folder without its images: placed on the series already open in the viewer, full shape,
    every voxel where the real labelmap (dcmqi's NRRD, read by SimpleITK) has it."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from perturbed_series import cropped_seg

    ct_files = sorted((dcmqi_dir / "ct-3slice").glob("*.dcm"))
    labelmap = sitk.ReadImage(str(dcmqi_dir / "liver_seg.nrrd"))
    series = _dicom_series(dcmqi_dir / "ct-3slice")
    native = np.zeros(sitk.GetArrayFromImage(series).shape, np.uint8)   # the mask on the series' own (SimpleITK) grid
    for idx in zip(*np.nonzero(sitk.GetArrayFromImage(labelmap))):
        p = labelmap.TransformIndexToPhysicalPoint([int(v) for v in idx[::-1]])
        native[tuple(series.TransformPhysicalPointToIndex(p)[::-1])] = 1
    # SimpleITK orders the slices as the files' positions ascend, as cropped_seg does
    cropped_seg(ct_files, native, tmp_path / "liver_cropped.dcm")
    assert pydicom_rows(tmp_path / "liver_cropped.dcm") < 512

    viewer = make_napari_viewer()
    (ct,) = viewer.open(str(dcmqi_dir / "ct-3slice"), plugin=PLUGIN)
    (seg,) = viewer.open(str(tmp_path / "liver_cropped.dcm"), plugin=PLUGIN)
    assert type(seg).__name__ == "Labels" and seg.data.shape == ct.data.shape
    assert tuple(seg.scale) == tuple(ct.scale) and tuple(seg.translate) == tuple(ct.translate)
    assert int((seg.data > 0).sum()) == int(native.sum())
    _assert_matches_itk(seg, labelmap, n=400, compare=lambda a, b: bool(a) == bool(b))
    for idx in zip(*np.nonzero(seg.data)):   # every labelled voxel is liver in the real labelmap
        itk_idx = labelmap.TransformPhysicalPointToIndex(_world_to_lps(seg, idx))
        assert labelmap.GetPixel(itk_idx) == 1
    assert seg.metadata["napari_ssl"]["series_instance_uid"] == ct.metadata["napari_ssl"]["series_instance_uid"]


def pydicom_rows(path) -> int:
    import pydicom

    return int(pydicom.dcmread(path, stop_before_pixels=True).Rows)
