"""Real-world header noise: a series whose files spell one geometry with different last digits reads
as one volume, exports as a valid DICOM-SEG (CLI) that reads back voxel-exact, and serves as
fine-tuning labels; a really mixed series gets one clear line. Cropped SEGs open on the source's
full grid. All series are derived from the real CT slices in ../shared/data (tests/perturbed_series.py).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from napari_ssl.cli import main as cli_main
from napari_ssl.errors import NapariSSLError
from napari_ssl.io import load_volume, load_volumes, write_itk_volume
from napari_ssl.io.export import export_labels
from napari_ssl.io.geometry_tolerance import ORIENTATION_TOL, consensus_orientation
from napari_ssl.io.nifti import read_itk_volume
from napari_ssl.io.seg.on_source import find_source_series, place_on_grid, read_on_source
from napari_ssl.io.seg.read import read_segmentation

from perturbed_series import COS, SIN, cropped_seg, oblique_series
from test_seg_export import dciodvfy_errors


def _ct3_files(dcmqi_dir) -> list[Path]:
    return sorted((dcmqi_dir / "ct-3slice").glob("*.dcm"))


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _mask(shape) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    z = shape[0]
    lab[1:z - 1, 150:260, 120:300] = 1
    lab[z // 2, 300:340, 200:230] = 2
    lab[0, 10:14, 500:505] = 2   # near the image border, first slice
    return lab


@pytest.fixture(scope="module")
def rounding(tmp_path_factory, dcmqi_dir) -> Path:
    """Nine oblique slices, orientation and positions spelled differently across files."""
    folder = tmp_path_factory.mktemp("rounding") / "series"
    oblique_series(_ct3_files(dcmqi_dir), folder, n_slices=9, variant="rounding")
    for f in folder.iterdir():
        os.chmod(f, 0o444)   # the user's files: read-only, and checked unchanged below
    return folder


def test_the_perturbation_is_the_real_world_one(rounding):
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(rounding.iterdir())]
    spellings = {bytes(h.get_item(0x00200037).value) for h in headers}   # the strings as written
    assert len(spellings) >= 2
    vals = [[float(v) for v in h.ImageOrientationPatient] for h in headers]
    assert any(v[5] == -0.059771 for v in vals) and any(v[5] == -0.0597709 for v in vals)
    assert len({h.ImagePositionPatient[0].original_string.count(".") and len(h.ImagePositionPatient[0].original_string) for h in headers}) >= 2
    _, dev = consensus_orientation(vals)
    assert 0 < dev <= ORIENTATION_TOL


def test_rounding_noise_series_reads_as_one_volume(rounding, dcmqi_dir):
    (vol,) = load_volumes(rounding, canonical=False)
    assert vol.shape == (9, 512, 512) and vol.warnings == []
    np.testing.assert_allclose(vol.direction[:, 2], [1, 0, 0], atol=1e-6)        # along a row
    np.testing.assert_allclose(vol.direction[:, 1], [0, COS, -SIN], atol=1e-6)   # down a column
    np.testing.assert_allclose(vol.spacing[0], 2.5, atol=1e-3)
    real = [pydicom.dcmread(f) for f in _ct3_files(dcmqi_dir)]
    for z in range(9):   # slice z of the series is real slice z % 3, rescaled
        ds = real[z % 3]
        np.testing.assert_array_equal(vol.array[z], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_cli_export_seg_on_rounding_noise_series(rounding, tmp_path, capsys):
    before = _digest(rounding)
    src = load_volume(rounding, canonical=False)
    lab = _mask(src.shape)
    nii = tmp_path / "mask.nii.gz"
    write_itk_volume(lab, src.affine, nii)
    out = tmp_path / "seg.dcm"
    rc = cli_main(["export-seg", "--labels", str(nii), "--source", str(rounding), "--out", str(out), "--names", "liver,lesion"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "warning" not in printed.out
    assert dciodvfy_errors(out) == []
    # one orientation in the SEG: the one most source files carry, as the source volume's affine
    ds = pydicom.dcmread(out)
    iop = [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient]
    np.testing.assert_allclose(iop, [1, 0, 0, 0, COS, -SIN], atol=1e-6)
    assert all("PlaneOrientationSequence" not in f for f in ds.PerFrameFunctionalGroupsSequence)
    # voxel-exact back, on the series as the viewer shows it and in native order
    for canonical in (True, False):
        ref = load_volume(rounding, canonical=canonical)
        (back, names), = read_segmentation(out, canonical=canonical)
        np.testing.assert_array_equal(place_on_grid(back, ref), _on(lab, src, ref))
        assert names == {1: "liver", 2: "lesion"}
    assert _digest(rounding) == before   # the user's files untouched


def _on(lab, src, ref):
    from napari_ssl.io.orientation import reorient_array

    return reorient_array(lab, src.affine, ref.affine)


def test_api_export_and_seg_as_finetune_labels(rounding, tmp_path):
    from napari_ssl.train.finetune import load_labels_and_names

    image = load_volume(rounding)   # canonical, as finetune loads it
    lab = _mask(image.shape)
    summary = export_labels(lab, image, tmp_path / "api.dcm", labels_affine=image.affine, names={1: "liver", 2: "lesion"})
    assert summary["format"] == "DICOM-SEG" and "warnings" not in summary
    arr, names = load_labels_and_names(str(tmp_path / "api.dcm"), image)
    np.testing.assert_array_equal(arr, lab)
    assert names == {1: "liver", 2: "lesion"}


def test_two_orientations_split_with_a_warning_and_export_is_one_line(tmp_path, dcmqi_dir, capsys):
    folder = tmp_path / "mixed"
    oblique_series(_ct3_files(dcmqi_dir), folder, n_slices=9, variant="two_orientations")
    vols = load_volumes(folder)
    assert sorted(v.shape[0] for v in vols) == [3, 6]
    assert all(any("orientations" in w for w in v.warnings) for v in vols)
    big = max(vols, key=lambda v: v.shape[0])
    nii = tmp_path / "m.nii.gz"
    write_itk_volume(_mask(big.shape), big.affine, nii)
    out = tmp_path / "o.dcm"
    rc = cli_main(["export-seg", "--labels", str(nii), "--source", str(folder), "--out", str(out), "--names", "a,b"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "holds 2 image series" in err and "\n" not in err
    assert not out.exists()
    # a Volume whose headers mix the two orientations (built by hand): refused in one line, nothing written
    from napari_ssl.io.seg.write import write_segmentation

    small = min(vols, key=lambda v: v.shape[0])
    mixed = big.with_array(big.array)
    mixed.source_datasets = list(big.source_datasets[:-1]) + [small.source_datasets[0]]
    with pytest.raises(NapariSSLError, match="mixes slice orientations") as ei:
        write_segmentation(_mask(big.shape), mixed, out, labels_affine=big.affine, names=["a", "b"])
    assert "\n" not in str(ei.value) and not out.exists()


@pytest.mark.parametrize("variant,warning", [("gantry_tilt", "gantry tilt"), ("missing_slice", "missing slice")])
def test_tilt_and_gap_warn_and_the_seg_sits_on_each_source_image(tmp_path, dcmqi_dir, capsys, variant, warning):
    folder = tmp_path / variant
    oblique_series(_ct3_files(dcmqi_dir), folder, n_slices=9, variant=variant)
    (src,) = load_volumes(folder, canonical=False)
    assert any(warning in w for w in src.warnings)
    lab = _mask(src.shape)
    nii = tmp_path / "m.nii.gz"
    write_itk_volume(lab, src.affine, nii)
    out = tmp_path / "t.dcm"
    rc = cli_main(["export-seg", "--labels", str(nii), "--source", str(folder), "--out", str(out), "--names", "a,b"])
    printed = capsys.readouterr().out
    assert rc == 0 and "warning: the source images are up to" in printed
    assert dciodvfy_errors(out) == []
    # every frame lies exactly on the image it references (not on a regularised grid)
    ds = pydicom.dcmread(out)
    ipp = {str(d.SOPInstanceUID): [float(v) for v in d.ImagePositionPatient] for d in src.source_datasets}
    native_index = {str(d.SOPInstanceUID): i for i, d in enumerate(src.source_datasets)}
    seen = set()
    for f in ds.PerFrameFunctionalGroupsSequence:
        uid = str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        np.testing.assert_allclose([float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient], ipp[uid], atol=1e-4)
        seen.add(native_index[uid])
    assert seen == set(np.flatnonzero(lab.reshape(lab.shape[0], -1).any(axis=1)))
    # and it opens again on the series voxel-exact: each frame on the image it references
    for ref in (src, load_volume(folder)):
        (placed, names), = read_on_source(out, ref)
        np.testing.assert_array_equal(placed.array, _on(lab, src, ref))
    back = tmp_path / "back.nii.gz"
    assert cli_main(["export-nifti", "--labels", str(out), "--source", str(folder), "--out", str(back)]) == 0
    np.testing.assert_array_equal(read_itk_volume(str(back)).array, lab)


# --- cropped SEGs ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cropped(tmp_path_factory, dcmqi_dir):
    """A study folder as 3D Slicer exports it: image/ (the real CT) beside seg/ (a SEG cropped to the liver)."""
    root = tmp_path_factory.mktemp("study")
    shutil.copytree(dcmqi_dir / "ct-3slice", root / "image")
    (root / "seg").mkdir()
    src = load_volume(root / "image", canonical=False)
    liver = read_itk_volume(str(dcmqi_dir / "liver_seg.nrrd"))
    mask = _on(liver.array, liver, src).astype(np.uint8)
    corner = cropped_seg(sorted((root / "image").glob("*.dcm")), mask, root / "seg" / "liver_cropped.dcm")
    return root, src, mask, corner


def test_cropped_seg_is_really_cropped(cropped):
    root, src, mask, corner = cropped
    ds = pydicom.dcmread(root / "seg" / "liver_cropped.dcm")
    assert (ds.Rows, ds.Columns) < (512, 512) and corner[1] > 0 and corner[2] > 0
    (own, _), = read_segmentation(root / "seg" / "liver_cropped.dcm", canonical=False)
    assert own.shape[1:] == (ds.Rows, ds.Columns)   # on its own, the SEG is the crop's size


def test_cropped_seg_on_the_source_grid_is_voxel_exact(cropped):
    root, src, mask, _ = cropped
    (placed, names), = read_on_source(root / "seg" / "liver_cropped.dcm", src)
    assert placed.shape == src.shape and names == {1: "Liver"}
    np.testing.assert_array_equal(placed.array, mask)
    np.testing.assert_allclose(placed.affine, src.affine)
    assert placed.series_instance_uid == src.series_instance_uid and placed.source_datasets   # exportable again


def test_the_source_beside_the_seg_is_found(cropped):
    root, src, mask, _ = cropped
    found = find_source_series(root / "seg" / "liver_cropped.dcm")
    assert found is not None and found.series_instance_uid == src.series_instance_uid
    np.testing.assert_array_equal(found.array, src.array)


def test_reader_opens_a_cropped_seg_alone_on_the_full_grid(cropped):
    from napari_ssl._napari.reader import layers_from_paths

    root, src, mask, _ = cropped
    (data, kwargs, kind), = layers_from_paths([str(root / "seg" / "liver_cropped.dcm")])
    canon = load_volume(root / "image")
    assert kind == "labels" and data.shape == canon.shape
    np.testing.assert_array_equal(data, _on(mask, src, canon))
    images = load_volumes(root / "image")
    (_img_data, img_kwargs, _), = [layers_from_paths([str(root / "image")])[0]]
    assert tuple(kwargs["scale"]) == tuple(img_kwargs["scale"]) and tuple(kwargs["translate"]) == tuple(img_kwargs["translate"])
    assert images[0].shape == data.shape


def test_cli_export_nifti_of_a_cropped_seg_is_full_size(cropped, tmp_path):
    root, src, mask, _ = cropped
    out = tmp_path / "full.nii.gz"
    assert cli_main(["export-nifti", "--labels", str(root / "seg" / "liver_cropped.dcm"), "--source", str(root / "image"), "--out", str(out)]) == 0
    got = read_itk_volume(str(out))
    np.testing.assert_array_equal(got.array, mask)


def test_a_seg_of_another_series_is_one_line_and_writes_nothing(cropped, tmp_path, dcmqi_dir, capsys):
    root, src, mask, _ = cropped
    other = tmp_path / "other"
    oblique_series(_ct3_files(dcmqi_dir), other, n_slices=3, variant="rounding")   # same pixels, another series
    out = tmp_path / "x.nii.gz"
    rc = cli_main(["export-nifti", "--labels", str(root / "seg" / "liver_cropped.dcm"), "--source", str(other), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "references another DICOM series" in err and "\n" not in err
    rc = cli_main(["export-seg", "--labels", str(root / "seg" / "liver_cropped.dcm"), "--source", str(other),
                   "--out", str(tmp_path / "x.dcm"), "--names", "liver"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "references another DICOM series" in err and "\n" not in err
    from napari_ssl.train.finetune import load_labels_and_names

    with pytest.raises(NapariSSLError, match="references another DICOM series"):
        load_labels_and_names(str(root / "seg" / "liver_cropped.dcm"), load_volume(other))
    assert sorted(os.listdir(tmp_path)) == ["other"]


@pytest.mark.parametrize("seg_name", ["liver.dcm", "partial_overlaps.dcm", "cropped"])
def test_placing_by_reference_and_by_geometry_agree(seg_name, cropped, dcmqi_dir):
    """Real dcmqi SEGs (one segment; five overlapping ones) and the cropped SEG: each frame put on the image it
    references gives exactly what placing the SEG's own grid on the series gives (a source without headers)."""
    import dataclasses

    from napari_ssl.io.seg.on_source import _masks_by_reference
    from napari_ssl.io.seg.read import _open_seg

    root, _, _, _ = cropped
    path = root / "seg" / "liver_cropped.dcm" if seg_name == "cropped" else dcmqi_dir / seg_name
    src = load_volume(root / "image")
    assert _masks_by_reference(_open_seg(str(path)), src) is not None   # the reference path applies
    by_ref = read_on_source(path, src)
    by_geometry = read_on_source(path, dataclasses.replace(src, source_datasets=[]))
    assert len(by_ref) == len(by_geometry) >= 1
    for (a, na), (b, nb) in zip(by_ref, by_geometry):
        assert na == nb and a.shape == src.shape and a.array.any()
        np.testing.assert_array_equal(a.array, b.array)


def test_the_export_widgets_job_on_rounding_noise_series(rounding, tmp_path):
    """The Export widget's job (napari_ssl.train.jobs:export_job in a child process, with the config the
    widget builds: the mask in the viewer's order and the reader's Volume) writes a valid SEG that reads back exactly."""
    from napari_ssl.train.runner import JobRunner

    image = load_volume(rounding)
    lab = _mask(image.shape)
    out = tmp_path / "widget.dcm"
    cfg = {"labels": lab.copy(), "source": image, "out_path": str(out), "labels_affine": image.affine,
           "names": {1: "liver", 2: "lesion"}, "labelmap": False}
    res = JobRunner("napari_ssl.train.jobs:export_job", cfg, label="Export DICOM-SEG").start().wait(timeout=300)
    assert res is not None and res["type"] == "done", res
    assert dciodvfy_errors(out) == []
    (placed, names), = read_on_source(out, image)
    np.testing.assert_array_equal(placed.array, lab)


def test_enhanced_source_with_per_frame_orientation_noise(tmp_path, dcmqi_dir):
    """The real Enhanced CT (dcmqi 23x38x3/multiframe) rewritten as some scanners write it: the orientation per
    frame instead of shared, each frame spelling it its own way. Reads as one volume, exports a valid SEG
    (the file untouched), reads back voxel-exact; one frame really rotated: one line, nothing written."""
    from napari_ssl.io.seg.write import write_segmentation

    ds = pydicom.dcmread(dcmqi_dir / "23x38x3" / "multiframe" / "mf.dcm")
    shared = ds.SharedFunctionalGroupsSequence[0]
    del shared.PlaneOrientationSequence
    spellings = [["1", "0", "0", "0", "1", "0"], ["1.000000", "0.000000", "0", "0", "1.0", "0"], ["0.9999999", "1e-07", "0", "0", "1", "-3e-07"]]
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ori = pydicom.Dataset()
        ori.ImageOrientationPatient = spellings[k % 3]
        item.PlaneOrientationSequence = [ori]
    path = tmp_path / "mf.dcm"
    ds.save_as(path)
    before = path.read_bytes()
    src = load_volume(path)
    assert src.warnings == [] and src.shape == (3, 38, 23)
    lab = np.zeros(src.shape, np.uint8)
    lab[:, 5:30, 3:20] = 1
    lab[1, 10:12, 10:12] = 2
    out = tmp_path / "seg.dcm"
    write_segmentation(lab, src, out, labels_affine=src.affine, names=["a", "b"])
    assert dciodvfy_errors(out) == [] and path.read_bytes() == before
    (back, _), = read_segmentation(out)
    np.testing.assert_array_equal(place_on_grid(back, src), lab)

    item = ds.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence[0]
    item.ImageOrientationPatient = ["0.996195", "0.087156", "0", "-0.087156", "0.996195", "0"]   # 5 degrees
    ds.save_as(path)
    with pytest.raises(NapariSSLError, match="holds 2 image series"):   # the reader splits it
        load_volume(path)
    mixed = src.with_array(src.array)   # a Volume holding all three frames anyway (built by hand)
    mixed.source_datasets = [pydicom.dcmread(path, stop_before_pixels=True)]
    with pytest.raises(NapariSSLError, match="mix slice orientations") as ei:
        write_segmentation(lab, mixed, tmp_path / "bad.dcm", labels_affine=src.affine, names=["a", "b"])
    assert "\n" not in str(ei.value) and not (tmp_path / "bad.dcm").exists()


def test_labelmap_seg_on_rounding_noise_series(rounding, tmp_path, dcmqi_dir):
    image = load_volume(rounding)
    lab = _mask(image.shape)
    out = tmp_path / "lm.dcm"
    summary = export_labels(lab, image, out, labels_affine=image.affine, names="liver,lesion", labelmap=True)
    assert summary["segmentation_type"] == "LABELMAP"
    known = set(dciodvfy_errors(dcmqi_dir / "sparse-labelmap-noppv.dcm"))   # dciodvfy predates the Label Map IOD
    assert set(dciodvfy_errors(out)) <= known
    (placed, names), = read_on_source(out, image)
    np.testing.assert_array_equal(placed.array, lab)
    (own, _), = read_segmentation(out)
    np.testing.assert_array_equal(place_on_grid(own, image), lab)
