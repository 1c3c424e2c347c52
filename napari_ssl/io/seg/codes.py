"""SNOMED CT category/type codes for segment names (DICOM CID 7150 / 7151 style).

A short table of common structures; a name is matched on its words ("left kidney",
"liver_seg", "Tumour 2" all match), anything else gets the generic Tissue/Tissue pair.
"""
from __future__ import annotations

import re

# (keywords, type code value, type meaning, category key)
_ANATOMY = "anatomy"
_ALTERED = "altered"
_TISSUE = "tissue"

_CATEGORIES = {
    _ANATOMY: ("91723000", "Anatomical Structure"),
    _ALTERED: ("49755003", "Morphologically Altered Structure"),
    _TISSUE: ("85756007", "Tissue"),
}

_TABLE: list[tuple[tuple[str, ...], str, str, str]] = [
    (("tumor", "tumour", "neoplasm"), "108369006", "Neoplasm", _ALTERED),
    (("metastasis", "metastases", "met"), "128462008", "Metastasis", _ALTERED),
    (("lesion",), "52988006", "Lesion", _ALTERED),
    (("mass",), "4147007", "Mass", _ALTERED),
    (("nodule",), "27925004", "Nodule", _ALTERED),
    (("cyst",), "367643001", "Cyst", _ALTERED),
    (("edema", "oedema"), "79654002", "Edema", _ALTERED),
    (("necrosis",), "6574001", "Necrosis", _ALTERED),
    (("hemorrhage", "haemorrhage", "bleed"), "50960005", "Hemorrhage", _ALTERED),
    (("liver",), "10200004", "Liver", _ANATOMY),
    (("spleen",), "78961009", "Spleen", _ANATOMY),
    (("kidney", "kidneys", "renal"), "64033007", "Kidney", _ANATOMY),
    (("lung", "lungs"), "39607008", "Lung", _ANATOMY),
    (("heart",), "80891009", "Heart", _ANATOMY),
    (("hippocampus", "hippocampal"), "5366008", "Hippocampus", _ANATOMY),
    (("brainstem",), "119238007", "Brain Stem", _ANATOMY),
    (("cerebellum",), "113305005", "Cerebellum", _ANATOMY),
    (("brain",), "12738006", "Brain", _ANATOMY),
    (("vertebra", "vertebrae", "vertebral"), "51282000", "Vertebra", _ANATOMY),
    (("spine",), "421060004", "Spine", _ANATOMY),
    (("rib", "ribs"), "113197003", "Rib", _ANATOMY),
    (("femur",), "71341001", "Femur", _ANATOMY),
    (("bone", "bones", "skeleton"), "272673000", "Bone", _ANATOMY),
    (("prostate",), "41216001", "Prostate", _ANATOMY),
    (("pancreas",), "15776009", "Pancreas", _ANATOMY),
    (("gallbladder",), "28231008", "Gallbladder", _ANATOMY),
    (("bladder",), "89837001", "Bladder", _ANATOMY),
    (("stomach",), "69695003", "Stomach", _ANATOMY),
    (("esophagus", "oesophagus"), "32849002", "Esophagus", _ANATOMY),
    (("aorta",), "15825003", "Aorta", _ANATOMY),
    (("colon",), "71854001", "Colon", _ANATOMY),
    (("muscle",), "71616004", "Muscle", _ANATOMY),
    (("fat", "adipose"), "256674009", "Fat", _TISSUE),
    (("skin",), "39937001", "Skin", _ANATOMY),
    (("trachea",), "44567001", "Trachea", _ANATOMY),
    (("thyroid",), "69748006", "Thyroid", _ANATOMY),
    (("adrenal",), "23451007", "Adrenal gland", _ANATOMY),
    (("ventricle", "ventricles"), "21814001", "Ventricle", _ANATOMY),
    (("white",), "389080008", "White Matter", _ANATOMY),
    (("gray", "grey"), "389081007", "Gray Matter", _ANATOMY),
    (("csf",), "65216001", "Cerebrospinal Fluid", _ANATOMY),
    (("spinal", "cord"), "2748008", "Spinal cord", _ANATOMY),
    (("lymph",), "59441001", "Lymph Node", _ANATOMY),
    (("uterus",), "35039007", "Uterus", _ANATOMY),
    (("breast",), "76752008", "Breast", _ANATOMY),
]

DEFAULT = ("85756007", "Tissue", _TISSUE)


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z]+", name.lower()) if w]


def lookup(name: str) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """((category value, scheme, meaning), (type value, scheme, meaning)) for a segment name."""
    words = _words(name)
    joined = "".join(words)
    for keys, value, meaning, cat in _TABLE:
        if any(k in words for k in keys) or any(len(k) > 5 and k in joined for k in keys):
            c = _CATEGORIES[cat]
            return (c[0], "SCT", c[1]), (value, "SCT", meaning)
    c = _CATEGORIES[DEFAULT[2]]
    return (c[0], "SCT", c[1]), (DEFAULT[0], "SCT", DEFAULT[1])


def coded_concepts(name: str):
    """The same as :func:`lookup`, as highdicom CodedConcepts (category, type)."""
    from highdicom.sr import CodedConcept

    cat, typ = lookup(name)
    return CodedConcept(value=cat[0], scheme_designator=cat[1], meaning=cat[2]), CodedConcept(value=typ[0], scheme_designator=typ[1], meaning=typ[2])
