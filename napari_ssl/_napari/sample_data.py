"""Sample studies for File > Open Sample > napari-ssl (real scans in resources/, with their licences)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import NapariSSLError
from .layers import image_layer_data, labels_layer_data, resample_labels_to

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
SAMPLE_MR = RESOURCES / "sample_mr"
SAMPLE_CT = RESOURCES / "sample_ct"
MR_IMAGE = SAMPLE_MR / "hippocampus_320_image.nii.gz"
MR_LABELS = SAMPLE_MR / "hippocampus_320_labels.nii.gz"
MR_SEGMENT_NAMES = {1: "anterior", 2: "posterior"}
CT_SERIES = SAMPLE_CT / "ct-3slice"
CT_SEG = SAMPLE_CT / "liver.dcm"


def hippocampus_mr() -> list[tuple]:
    """T1 MR crop (MSD Task04, CC BY-SA 4.0) and its expert labels: 1 anterior, 2 posterior hippocampus."""
    from ..io import load_volume

    image = load_volume(MR_IMAGE)
    labels = load_volume(MR_LABELS)
    image.modality = image.modality or "MR"
    image.series_description = image.series_description or "Hippocampus T1 (MSD)"
    placed = resample_labels_to(labels, image)
    if placed is None:
        raise NapariSSLError(f"{MR_LABELS.name} is not on the grid of {MR_IMAGE.name}")
    return [
        image_layer_data(image),
        labels_layer_data(placed, MR_SEGMENT_NAMES, name="hippocampus labels"),
    ]


def ct_liver_seg() -> list[tuple]:
    """Three real CT slices (dcmqi test data, BSD-3) and the real liver DICOM-SEG that references them."""
    from ..io import load_volume
    from .reader import read_segmentation_layers

    ct = load_volume(CT_SERIES)
    ct.series_description = ct.series_description or "CT (dcmqi sample)"
    seg_layers = read_segmentation_layers(str(CT_SEG), [ct])
    for data, kwargs, kind in seg_layers:
        kwargs["metadata"]["napari_ssl"]["sample_label_source"] = "DICOM-SEG"
    return [image_layer_data(ct)] + seg_layers
