"""RTSTRUCT as labels, on the real cervical CT (296 x 512 x 512, 10 automatic ROIs).

The reference mask is an independent rasterisation written here: each slice's geometry straight from
its own header (ImagePositionPatient, PixelSpacing, ImageOrientationPatient) and matplotlib's
Path.contains_points on the pixel centres -- not the affine or the scanline fill of napari_ssl.io.dicom.rtstruct.
"""
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from napari_ssl.errors import NapariSSLError

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def cervical(data_dir) -> Path:
    d = data_dir / "tcia_cervical_ct"
    if not (d / "RTstruct.dcm").is_file():
        pytest.fail(f"missing {d}/RTstruct.dcm", pytrace=False)
    return d


@pytest.fixture(scope="module")
def loaded(cervical):
    from napari_ssl.io.dicom.rtstruct import read_rtstruct_labels

    t0 = time.perf_counter()
    vol, names, colors = read_rtstruct_labels(cervical / "RTstruct.dcm")
    seconds = time.perf_counter() - t0
    print(f"\nRTSTRUCT 10 ROIs + the 296-slice CT read and rasterised in {seconds:.2f} s (load {os.getloadavg()[0]:.2f})")
    return vol, names, colors, seconds


def independent_masks(cervical) -> tuple[dict[str, np.ndarray], list[float]]:
    from matplotlib.path import Path as MplPath

    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((cervical / "CT_images").glob("*.dcm"))]
    iop = np.array(heads[0].ImageOrientationPatient, float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    heads.sort(key=lambda h: float(np.dot(normal, np.array(h.ImagePositionPatient, float))))
    zpos = np.array([float(np.dot(normal, np.array(h.ImagePositionPatient, float))) for h in heads])
    rows, cols = int(heads[0].Rows), int(heads[0].Columns)
    dr, dc = (float(v) for v in heads[0].PixelSpacing)  # row spacing, column spacing
    ds = pydicom.dcmread(cervical / "RTstruct.dcm")
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for rc in ds.ROIContourSequence:
        mask = np.zeros((len(heads), rows, cols), bool)
        for c in rc.ContourSequence:
            pts = np.array(c.ContourData, float).reshape(-1, 3)
            if len(pts) < 3:
                continue
            k = int(np.argmin(np.abs(zpos - float(np.dot(normal, pts[0])))))
            ipp = np.array(heads[k].ImagePositionPatient, float)
            col = (pts - ipp) @ row_dir / dc   # along a row = column index
            row = (pts - ipp) @ col_dir / dr
            r0, r1 = max(int(np.floor(row.min())), 0), min(int(np.ceil(row.max())) + 1, rows)
            c0, c1 = max(int(np.floor(col.min())), 0), min(int(np.ceil(col.max())) + 1, cols)
            yy, xx = np.mgrid[r0:r1, c0:c1]
            centres = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(float)
            inside = MplPath(np.stack([col, row], axis=1)).contains_points(centres).reshape(r1 - r0, c1 - c0)
            mask[k, r0:r1, c0:c1] ^= inside
        out[names[int(rc.ReferencedROINumber)]] = mask
    return out, zpos.tolist()


def test_ten_rois_load_fast_and_match_an_independent_rasterisation(cervical, loaded):
    vol, names, colors, seconds = loaded
    assert seconds < 5.0
    assert vol.shape == (296, 512, 512)
    assert len(names) == 10 and names[1] == "liver" and names[8] == "urinary_bladder"
    assert colors[1] == (255, 0, 255) and colors[10] == (255, 20, 147)   # ROIDisplayColor kept
    # canonical array of this axial CT: z ascending (S), rows posterior, columns to the left = the header order
    assert vol.affine[2, 0] > 0 and vol.affine[1, 1] > 0 and vol.affine[0, 2] > 0
    ref, _ = independent_masks(cervical)
    for value, name in names.items():
        a, b = vol.array == value, ref[name]
        dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        print(f"  {name}: Dice {dice:.5f} vs the independent fill ({np.count_nonzero(a)} voxels)")
        assert dice >= 0.98, (name, dice)
        assert np.count_nonzero(a) > 1000
    # the labels carry the series' identity, so they export as a SEG on it
    assert vol.series_instance_uid == str(pydicom.dcmread(next((cervical / "CT_images").glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)
    assert len(vol.source_datasets) == 296


def _copy_rt(cervical, tmp_path, edit) -> Path:
    d = tmp_path / "study"
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "CT_images").exists():   # file links (folder links are not followed when searching)
        (d / "CT_images").mkdir()
        for f in (cervical / "CT_images").iterdir():
            os.symlink(f, d / "CT_images" / f.name)
    ds = pydicom.dcmread(cervical / "RTstruct.dcm")
    edit(ds)
    p = d / "RTstruct.dcm"
    ds.save_as(p)
    return p


def _add_bladder_copy(ds):
    import copy

    roi = copy.deepcopy(ds.StructureSetROISequence[7])
    roi.ROINumber = 11
    roi.ROIName = "bladder_copy"
    ds.StructureSetROISequence.append(roi)
    rc = copy.deepcopy(ds.ROIContourSequence[7])
    rc.ReferencedROINumber = 11
    ds.ROIContourSequence.append(rc)


def test_overlapping_rois_are_one_clear_error_unless_picked_and_ordered(cervical, tmp_path):
    from napari_ssl.io.dicom.rtstruct import read_rtstruct_labels

    p = _copy_rt(cervical, tmp_path, _add_bladder_copy)
    with pytest.raises(NapariSSLError, match=r"ROIs overlap \(urinary_bladder & bladder_copy .*--rois"):
        read_rtstruct_labels(p)
    vol, names, _ = read_rtstruct_labels(p, rois="liver, bladder_copy,urinary_bladder")
    assert names == {1: "liver", 2: "bladder_copy", 3: "urinary_bladder"}
    assert np.count_nonzero(vol.array == 2) == 0 and np.count_nonzero(vol.array == 3) > 1000   # the later one wins
    with pytest.raises(NapariSSLError, match="no ROI named 'spleen'"):
        read_rtstruct_labels(p, rois=["spleen"])


def test_bad_rtstructs_give_one_line_errors(cervical, tmp_path, dcmqi_dir):
    from napari_ssl.io.dicom.rtstruct import read_rtstruct_labels

    # another series: the given source is not the referenced one
    with pytest.raises(NapariSSLError, match="references another image series"):
        read_rtstruct_labels(cervical / "RTstruct.dcm", source=dcmqi_dir / "ct-3slice")
    # the referenced series is not beside it
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(cervical / "RTstruct.dcm", lone)
    with pytest.raises(NapariSSLError, match="is not under"):
        read_rtstruct_labels(lone / "RTstruct.dcm")
    # truncated file
    data = (cervical / "RTstruct.dcm").read_bytes()
    (lone / "cut.dcm").write_bytes(data[: len(data) // 3])
    with pytest.raises(NapariSSLError, match="cut.dcm") as exc:
        read_rtstruct_labels(lone / "cut.dcm", source=cervical / "CT_images")
    assert "\n" not in str(exc.value)

    # a contour far outside the image: 1 m above the last slice (axis 2), and 2 m off to the side (axis 0)
    for axis, mm in ((2, 1000), (0, 2000)):
        def shift(ds, axis=axis, mm=mm):
            c = ds.ROIContourSequence[0].ContourSequence[0]
            pts = np.array(c.ContourData, float).reshape(-1, 3)
            pts[:, axis] += mm
            c.ContourData = [f"{v:.4f}" for v in pts.ravel()]

        p = _copy_rt(cervical, tmp_path / f"shift{axis}", shift)
        with pytest.raises(NapariSSLError, match="ROI 'liver': a contour lies outside the image"):
            read_rtstruct_labels(p)


def test_finetune_labels_and_cli_exports_accept_an_rtstruct(cervical, tmp_path, loaded, capsys):
    from napari_ssl import api
    from napari_ssl.cli import main
    from napari_ssl.io.nifti import read_itk_volume
    from napari_ssl.io.seg.read import read_single_label_map
    from napari_ssl.train.finetune import load_labels_and_names

    vol, names, _, _ = loaded
    image = api.load_volume(cervical / "CT_images")
    picked, picked_names, picked_colors = api.load_rtstruct(cervical / "RTstruct.dcm", source=image, rois=["femur_right"])
    assert picked_names == {1: "femur_right"} and picked_colors == {1: (255, 20, 147)}
    assert np.array_equal(picked.array == 1, vol.array == 10)
    lab, got = load_labels_and_names(str(cervical / "RTstruct.dcm"), image)
    assert got == names and np.array_equal(lab, vol.array)
    lab2, got2 = load_labels_and_names(str(cervical / "RTstruct.dcm"), image, rois=["urinary_bladder", "femur_left"])
    assert got2 == {1: "urinary_bladder", 2: "femur_left"}
    assert np.array_equal(lab2 == 1, vol.array == 8) and np.array_equal(lab2 == 2, vol.array == 9)

    out = tmp_path / "rt.nii.gz"
    assert main(["export-nifti", "--labels", str(cervical / "RTstruct.dcm"), "--source", str(cervical / "CT_images"), "--out", str(out)]) == 0
    nii = read_itk_volume(str(out))
    assert np.array_equal(np.sort(np.unique(nii.array)), np.arange(11))
    assert np.count_nonzero(nii.array == 1) == np.count_nonzero(vol.array == 1)

    seg = tmp_path / "rt.dcm"
    assert main(["export-seg", "--labels", str(cervical / "RTstruct.dcm"), "--source", str(cervical / "CT_images"), "--out", str(seg),
                 "--rois", "urinary_bladder,femur_right"]) == 0
    back, seg_names = read_single_label_map(seg, canonical=True)
    assert sorted(seg_names.values()) == ["femur_right", "urinary_bladder"]
    from napari_ssl.io.seg.on_source import place_on_grid

    placed = place_on_grid(back, vol)
    seg_val = {v: k for k, v in seg_names.items()}
    assert np.array_equal(placed == seg_val["urinary_bladder"], vol.array == 8)
    assert np.array_equal(placed == seg_val["femur_right"], vol.array == 10)

    capsys.readouterr()
    assert main(["export-nifti", "--labels", str(out), "--source", str(cervical / "CT_images"), "--out", str(tmp_path / "y.nii.gz"),
                 "--rois", "liver"]) == 2
    assert "not an RTSTRUCT" in capsys.readouterr().err
    assert main(["export-seg", "--labels", str(cervical / "RTstruct.dcm"), "--source", str(tmp_path), "--out", str(tmp_path / "x.dcm")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.dcm").exists()


def test_napari_reader_gives_labels_on_the_referenced_series_with_roi_colours(cervical, tmp_path):
    from napari_ssl._napari.reader import layers_from_paths

    layers = layers_from_paths([str(cervical / "RTstruct.dcm")])     # the series is found beside it
    kinds = [k for _d, _kw, k in layers]
    assert kinds == ["image", "labels"]
    img, lab = layers[0], layers[1]
    assert lab[0].shape == img[0].shape == (296, 512, 512)
    meta = lab[1]["metadata"]["napari_ssl"]
    assert meta["segment_names"][1] == "liver" and meta["series_instance_uid"] == img[1]["metadata"]["napari_ssl"]["series_instance_uid"]
    assert np.allclose(lab[1]["colormap"][1][:3], np.array([255, 0, 255]) / 255)
    assert lab[1]["scale"] == img[1]["scale"] and lab[1]["translate"] == img[1]["translate"]
    # overlapping ROIs: two non-overlapping layers, nothing lost
    p = _copy_rt(cervical, tmp_path, _add_bladder_copy)
    layers = layers_from_paths([str(p.parent)])
    labels = [x for x in layers if x[2] == "labels"]
    assert len(labels) == 2 and sum(len(x[1]["metadata"]["napari_ssl"]["segment_names"]) for x in labels) == 11


def test_cli_finetune_on_the_ct_with_rtstruct_labels(cervical, tmp_path, capsys):
    import json

    from napari_ssl.cli import main

    out = tmp_path / "model"
    rc = main(["finetune", "--image", str(cervical / "CT_images"), "--labels", str(cervical / "RTstruct.dcm"), "--rois", "urinary_bladder,femur_left",
               "--out", str(out), "--steps", "2", "--image-size", "32", "--batch-size", "2"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "model.json").read_text())
    assert meta["class_names"] == ["urinary_bladder", "femur_left"]
    assert len(meta["training_slices"][0]["slices"]) > 10   # the slices the two ROIs cover
    capsys.readouterr()
    rc = main(["finetune", "--image", str(cervical / "CT_images"), "--labels", str(cervical / "RTstruct.dcm"), "--rois", "spleen",
               "--out", str(tmp_path / "bad"), "--steps", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no ROI named 'spleen'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_series_in_a_sibling_folder_is_found(cervical, tmp_path, loaded):
    """study/CT/*.dcm + study/RT/rt.dcm, the layout PACS exports (and `deidentify`) write."""
    from napari_ssl.io.dicom.rtstruct import read_rtstruct_labels

    (tmp_path / "study" / "CT").mkdir(parents=True)
    (tmp_path / "study" / "RT").mkdir()
    for f in (cervical / "CT_images").iterdir():
        os.symlink(f, tmp_path / "study" / "CT" / f.name)
    shutil.copy(cervical / "RTstruct.dcm", tmp_path / "study" / "RT" / "rt.dcm")
    vol, names, _ = read_rtstruct_labels(tmp_path / "study" / "RT" / "rt.dcm")
    assert names == loaded[1] and np.array_equal(vol.array, loaded[0].array)


def _write_rtstruct(series_files, masks_by_name, path):
    """A minimal real-format RTSTRUCT: each mask's outlines (skimage find_contours at 0.5, in pixel units)
    put in patient coordinates from each slice's own header (IPP, IOP, PixelSpacing)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from skimage.measure import find_contours

    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_files]
    iop = np.array(heads[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    heads.sort(key=lambda h: float(np.dot(normal, np.array(h.ImagePositionPatient, float))))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.481.3", ds.file_meta.MediaStorageSOPInstanceUID, "RTSTRUCT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = heads[0].StudyInstanceUID, generate_uid()
    se = Dataset()
    se.SeriesInstanceUID = heads[0].SeriesInstanceUID
    st = Dataset()
    st.RTReferencedSeriesSequence = Sequence([se])
    fr = Dataset()
    fr.FrameOfReferenceUID = heads[0].FrameOfReferenceUID
    fr.RTReferencedStudySequence = Sequence([st])
    ds.ReferencedFrameOfReferenceSequence = Sequence([fr])
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    for n, (name, mask) in enumerate(masks_by_name.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = n, name, heads[0].FrameOfReferenceUID
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber, rc.ROIDisplayColor, rc.ContourSequence = n, [n * 40 % 256, 128, 200], Sequence()
        for k, h in enumerate(heads):
            ipp = np.array(h.ImagePositionPatient, float)
            dr, dc = (float(v) for v in h.PixelSpacing)
            for c in find_contours(np.pad(mask[k], 1).astype(float), 0.5):
                rows, cols = c[:, 0] - 1, c[:, 1] - 1
                pts = ipp[None] + cols[:, None] * dc * iop[None, :3] + rows[:, None] * dr * iop[None, 3:]
                item = Dataset()
                item.ContourGeometricType, item.NumberOfContourPoints = "CLOSED_PLANAR", len(pts)
                item.ContourData = [f"{v:.4f}" for v in pts.ravel()]
                rc.ContourSequence.append(item)
        ds.ROIContourSequence.append(rc)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("case", ["ct_liver", "mr_small"])
def test_rtstruct_from_a_known_mask_reads_back_on_ct_and_mr(case, dcmqi_dir, tmp_path):
    """Outlines of a known mask written as an RTSTRUCT read back onto the series: the real liver SEG on the
    3-slice CT, and an ellipse with a hole on pydicom's MR_small."""
    from napari_ssl.io import load_volume
    from napari_ssl.io.dicom.rtstruct import read_rtstruct_labels

    if case == "ct_liver":
        from napari_ssl.io.seg.on_source import place_on_grid
        from napari_ssl.io.seg.read import read_single_label_map

        series = sorted((dcmqi_dir / "ct-3slice").glob("*.dcm"))
        vol = load_volume(dcmqi_dir / "ct-3slice", canonical=False)
        seg, _ = read_single_label_map(dcmqi_dir / "liver.dcm", canonical=False)
        truth = place_on_grid(seg, vol) > 0
    else:
        from pydicom.data import get_testdata_file

        series = [get_testdata_file("MR_small.dcm")]
        vol = load_volume(series[0], canonical=False)
        yy, xx = np.mgrid[0:vol.shape[1], 0:vol.shape[2]]
        ell = ((yy - 30) / 18.0) ** 2 + ((xx - 34) / 12.0) ** 2 <= 1
        hole = ((yy - 30) / 5.0) ** 2 + ((xx - 34) / 4.0) ** 2 <= 1
        truth = (ell & ~hole)[None]
    rt = tmp_path / "rt.dcm"
    _write_rtstruct([str(s) for s in series], {"thing": truth}, rt)
    lab, names, colors = read_rtstruct_labels(rt, source=vol, canonical=False)
    got = lab.array == 1
    dice = 2 * np.count_nonzero(got & truth) / (np.count_nonzero(got) + np.count_nonzero(truth))
    assert names == {1: "thing"} and colors == {1: (40, 128, 200)}
    print(f"\n{case}: Dice {dice:.4f} ({np.count_nonzero(truth)} voxels)")
    assert dice >= 0.98, dice
    if case == "mr_small":
        assert not got[0, 30, 34]  # the hole stays a hole
