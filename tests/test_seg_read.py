"""Reading real DICOM-SEGs (dcmqi test data) gives the same voxels as their NRRD label maps."""
import numpy as np
import pytest

from napari_ssl.errors import NapariSSLError
from napari_ssl.io.nifti import read_itk_volume
from napari_ssl.io.orientation import reorient_array
from napari_ssl.io.seg import is_segmentation_file, read_segmentation


def _corners(vol):
    """LPS positions (0.01 mm) of the 8 corner voxel centres of a volume's grid."""
    last = np.array(vol.shape) - 1
    return {tuple(np.round(vol.affine @ [*(np.array(c) * last), 1], 2)[:3]) for c in np.ndindex(2, 2, 2)}


def _same_grid_and_voxels(vol, ref, padding=None):
    expected = ref.array.copy()
    if padding is not None:  # dcmqi writes the SEG's Pixel Padding Value into slices the SEG omits
        expected[expected == padding] = 0
    got = reorient_array(vol.array, vol.affine, ref.affine)
    assert got.shape == expected.shape
    assert _corners(vol) == _corners(ref), "labels volume does not cover the same physical box as the NRRD"
    np.testing.assert_array_equal(got, expected)


def test_liver_binary_matches_nrrd(dcmqi_dir):
    (vol, names), = read_segmentation(dcmqi_dir / "liver.dcm")
    assert names == {1: "Liver"}
    assert vol.series_instance_uid and vol.series_instance_uid.endswith(".23430.1")
    assert vol.frame_of_reference_uid
    assert vol.array.sum() > 1000
    _same_grid_and_voxels(vol, read_itk_volume(str(dcmqi_dir / "liver_seg.nrrd")))


def test_partial_overlaps_split_into_non_overlapping_groups(dcmqi_dir):
    out = read_segmentation(dcmqi_dir / "partial_overlaps.dcm")
    assert [sorted(n) for _, n in out] == [[1, 4, 5], [2], [3]]
    assert out[0][1] == {1: "GREEN", 4: "LIGHT_BLUE", 5: "DARK_BLUE"}
    for k, (vol, _) in enumerate(out, start=1):
        assert any("overlap" in w for w in vol.warnings)
        _same_grid_and_voxels(vol, read_itk_volume(str(dcmqi_dir / f"partial_overlaps-{k}.nrrd")))


@pytest.mark.parametrize("name,nrrd,padding", [
    ("sparse-labelmap-noppv.dcm", "sparse_labelmap_noppv_seg.nrrd", None),
    ("sparse-labelmap-ppv5.dcm", "sparse_labelmap_ppv5_seg.nrrd", 5),
])
def test_sparse_labelmap_matches_nrrd(dcmqi_dir, name, nrrd, padding):
    (vol, names), = read_segmentation(dcmqi_dir / name)
    assert names == {1: "Liver"}  # segment 0 ("Background") of a LABELMAP is not a label
    assert vol.shape == (3, 38, 24)  # 2 stored frames, the omitted middle slice filled with 0
    _same_grid_and_voxels(vol, read_itk_volume(str(dcmqi_dir / nrrd)), padding=padding)


@pytest.mark.parametrize("size", ["23x38x3", "24x38x3"])
def test_small_binary_segs_match_nrrd(dcmqi_dir, size):
    (vol, names), = read_segmentation(dcmqi_dir / size / "seg" / "label.seg")
    assert names == {1: "Liver"}
    _same_grid_and_voxels(vol, read_itk_volume(str(dcmqi_dir / size / "nrrd" / "label.nrrd")))


def test_canonical_and_native_orders_agree(dcmqi_dir):
    (canon, _), = read_segmentation(dcmqi_dir / "liver.dcm")
    (native, _), = read_segmentation(dcmqi_dir / "liver.dcm", canonical=False)
    np.testing.assert_array_equal(reorient_array(canon.array, canon.affine, native.affine), native.array)
    # canonical: z runs superior, so the affine's slice step has a positive S component
    assert canon.affine[2, 0] > 0


def test_not_a_seg_is_a_clear_error(dcmqi_dir):
    src = dcmqi_dir / "ct-3slice" / "01.dcm"
    assert not is_segmentation_file(str(src))
    assert is_segmentation_file(str(dcmqi_dir / "liver.dcm"))
    with pytest.raises(NapariSSLError, match="not a readable DICOM-SEG"):
        read_segmentation(src)


def test_fractional_seg_is_thresholded_at_one_half(tmp_path, dcmqi_dir):
    """A FRACTIONAL SEG (written here with highdicom on the real CT) reads as voxels >= 0.5."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from napari_ssl.io import load_volume

    src = load_volume(dcmqi_dir / "ct-3slice", canonical=False)
    prob = np.zeros((*src.shape, 1), np.float32)
    yy, xx = np.mgrid[:512, :512]
    ramp = np.clip(1.0 - np.hypot(yy - 256, xx - 200) / 120.0, 0, 1)  # 1 at the centre, 0 beyond 120 px
    prob[1, ..., 0] = ramp
    prob[2, ..., 0] = ramp * 0.8
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Liver", segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Liver, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=src.source_datasets, pixel_array=prob, segmentation_type="FRACTIONAL", segment_descriptions=[desc],
        series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="1", device_serial_number="1", max_fractional_value=255,
        specific_character_set=None,  # the real CT has an empty one, which highdicom would refuse
    )
    path = tmp_path / "frac.dcm"
    seg.save_as(path)
    assert pydicom.dcmread(path).SegmentationType == "FRACTIONAL"
    (vol, names), = read_segmentation(path, canonical=False)
    assert names == {1: "Liver"}
    stored = np.round(prob[..., 0] * 255) / 255  # what the 8-bit fractional frames hold
    expected = (stored >= 0.5).astype(np.uint8)
    # the SEG holds only the non-empty slices 1 and 2; place them by physical position
    from napari_ssl.io.seg import place_on_grid
    from napari_ssl.io.volume import Volume

    got = place_on_grid(vol, Volume(array=np.zeros(src.shape, np.uint8), affine=src.affine))
    assert expected.sum() > 1000 and expected[2].sum() < expected[1].sum()
    np.testing.assert_array_equal(got, expected)
