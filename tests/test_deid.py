"""De-identified export on real CT (cervical, a subset of slices) and MR (pydicom's MR_small), with a SEG.

Compliance is checked against PS3.15 Table E.1-1 as dicom-anonymizer ships it (generated from the standard),
never a hand list: every attribute the table lists that carried a value in the source is, in the output,
absent (always, for action X) or emptied or replaced; no private attribute is left.
"""
import os
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from napari_ssl.cli import main
from napari_ssl.errors import NapariSSLError
from napari_ssl.io import load_volume
from napari_ssl.io.dicom.deid import KEY_ENV, action_for, basic_profile_table, deidentify
from napari_ssl.io.export import export_labels

pytestmark = pytest.mark.filterwarnings("ignore")
KEY = "test-key-0f3a9c1d"


def dcm_files(folder):
    return sorted(str(p) for p in __import__("pathlib").Path(folder).rglob("*.dcm"))


def profile_violations(src_files, out_files):
    """(file, attribute, problem) for every Basic Profile attribute not removed or replaced."""
    _ed, exact, masked = basic_profile_table()
    originals: dict[int, set] = {}

    def collect(_d, e):
        if action_for(e.tag, exact, masked) and e.VR != "SQ" and e.value not in (None, "", b""):
            originals.setdefault(int(e.tag), set()).add(str(e.value))

    for f in src_files:
        pydicom.dcmread(f, stop_before_pixels=True).walk(collect)
    assert len(originals) > 10  # the sources do carry identifying attributes
    bad = []
    for f in out_files:
        def check(_d, e):
            if e.tag.is_private:
                bad.append((f, str(e.tag), "private attribute kept"))
                return
            a = action_for(e.tag, exact, masked)
            if a == "X":
                bad.append((f, e.keyword, "X attribute present"))
            elif a and e.VR != "SQ" and e.value not in (None, "", b"") and str(e.value) in originals.get(int(e.tag), ()):
                bad.append((f, e.keyword, f"{a}: original value kept"))
        pydicom.dcmread(f, stop_before_pixels=True).walk(check)
    return bad


def dciodvfy_errors(path):
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return {line.strip() for line in (r.stdout + r.stderr).splitlines() if line.strip().startswith("Error")}


@pytest.fixture(scope="module")
def ct_study(data_dir, tmp_path_factory):
    """Six real CT slices and a SEG exported on them, in one folder (as a user would hand them over)."""
    d = tmp_path_factory.mktemp("ct_study")
    src = data_dir / "tcia_cervical_ct" / "CT_images"
    for name in sorted(os.listdir(src))[100:106]:
        shutil.copy(src / name, d / name)
    vol = load_volume(d, canonical=False)
    lab = np.zeros(vol.shape, np.uint8)
    lab[1:5, 200:320, 180:300] = 1
    lab[2:4, 330:360, 200:240] = 2
    export_labels(lab, vol, d / "seg.dcm", names={1: "liver", 2: "urinary bladder"})
    return d


@pytest.fixture(scope="module")
def mr_study(tmp_path_factory):
    d = tmp_path_factory.mktemp("mr_study")
    shutil.copy(get_testdata_file("MR_small.dcm"), d / "MR_small.dcm")
    vol = load_volume(d, canonical=False)
    lab = np.zeros(vol.shape, np.uint8)
    lab[0, 20:40, 20:44] = 1
    export_labels(lab, vol, d / "seg.dcm", names={1: "brain"})
    return d


def _run_cli(src, out, monkeypatch, key=KEY, extra=()):
    monkeypatch.setenv(KEY_ENV, key)
    return main(["deidentify", str(src), "--out", str(out), *extra])


@pytest.mark.parametrize("study", ["ct_study", "mr_study"])
def test_basic_profile_applied_and_seg_references_resolve(study, request, tmp_path, monkeypatch, capsys):
    src = request.getfixturevalue(study)
    out = tmp_path / "deid"
    assert _run_cli(src, out, monkeypatch) == 0
    assert "key: $NAPARI_SSL_DEID_KEY" in capsys.readouterr().out
    src_files, out_files = dcm_files(src), dcm_files(out)
    assert len(out_files) == len(src_files)
    assert len(profile_violations(src_files, src_files)) > 10   # the check does catch the identifying source
    assert profile_violations(src_files, out_files) == []
    outs = [pydicom.dcmread(f, stop_before_pixels=True) for f in out_files]
    for ds in outs:
        assert ds.PatientIdentityRemoved == "YES"
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]
        assert ds.DeidentificationMethod
    # the key is written nowhere; no original file name either
    for f in out_files:
        assert KEY.encode() not in open(f, "rb").read()
        assert os.path.basename(f) not in {os.path.basename(s) for s in src_files if not s.endswith("seg.dcm")} or os.path.basename(f).startswith("0")
    seg = next(ds for ds in outs if ds.Modality == "SEG")
    images = [ds for ds in outs if ds.Modality != "SEG"]
    src_seg = pydicom.dcmread(src / "seg.dcm", stop_before_pixels=True)
    assert seg.SOPInstanceUID != src_seg.SOPInstanceUID and seg.PatientID != src_seg.PatientID
    image_uids = {str(ds.SOPInstanceUID) for ds in images}
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == images[0].SeriesInstanceUID != src_seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in ref.ReferencedInstanceSequence} == image_uids
    assert seg.FrameOfReferenceUID == images[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == images[0].StudyInstanceUID and seg.PatientID == images[0].PatientID
    for fr in seg.PerFrameFunctionalGroupsSequence:
        for der in fr.DerivationImageSequence:
            for s in der.SourceImageSequence:
                assert str(s.ReferencedSOPInstanceUID) in image_uids
    # the de-identified SEG still opens on the de-identified series, voxel for voxel as before
    from napari_ssl._napari.reader import layers_from_paths

    before = [x for x in layers_from_paths([str(src)]) if x[2] == "labels"][0][0]
    after = [x for x in layers_from_paths([str(out)]) if x[2] == "labels"][0][0]
    assert after.shape == before.shape and np.array_equal(after, before) and after.any()
    # dciodvfy: no error that the source did not have
    for s, o in ((src / "seg.dcm", [f for f in out_files if "_SEG" in f][0]),
                 (sorted(f for f in src_files if not f.endswith("seg.dcm"))[0], [f for f in out_files if "_SEG" not in f][0])):
        new = dciodvfy_errors(o) - dciodvfy_errors(s)
        assert new == set(), (s, new)


def test_same_key_same_pseudonyms_other_key_others_no_key_random(ct_study, tmp_path, monkeypatch):
    def ids(folder):
        ds = pydicom.dcmread(dcm_files(folder)[0], stop_before_pixels=True)
        return ds.PatientID, str(ds.PatientName), ds.StudyInstanceUID, ds.SOPInstanceUID, ds.StudyDate

    assert _run_cli(ct_study, tmp_path / "a", monkeypatch) == 0
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")
    monkeypatch.delenv(KEY_ENV)
    assert main(["deidentify", str(ct_study), "--out", str(tmp_path / "b"), "--key-file", str(key_file)]) == 0
    assert ids(tmp_path / "a") == ids(tmp_path / "b")              # a second run (e.g. a later study) stays linked
    assert _run_cli(ct_study, tmp_path / "c", monkeypatch, key="another-key") == 0
    assert ids(tmp_path / "c")[:4] != ids(tmp_path / "a")[:4] and ids(tmp_path / "c")[0] != ids(tmp_path / "a")[0]
    monkeypatch.delenv(KEY_ENV)
    s1 = deidentify([str(ct_study)], str(tmp_path / "d"))
    s2 = deidentify([str(ct_study)], str(tmp_path / "e"))
    assert s2["key"] == s1["key"]
    assert s1["key"].startswith("none") and ids(tmp_path / "d")[0] != ids(tmp_path / "e")[0]


def test_bad_input_one_line_errors_and_nothing_written(ct_study, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    files = [f for f in dcm_files(ct_study) if not f.endswith("seg.dcm")]

    def case(name, edit):
        d = tmp_path / name
        d.mkdir()
        for f in files[:3]:
            shutil.copy(f, d)
        edit(d)
        return d

    def other_patient(d):
        p = dcm_files(d)[0]
        ds = pydicom.dcmread(p)
        ds.PatientID, ds.PatientName = "OTHER-42", "Other^Person"
        ds.save_as(p)

    def burned_in(d):
        p = dcm_files(d)[1]
        ds = pydicom.dcmread(p)
        ds.BurnedInAnnotation = "YES"
        ds.save_as(p)

    def truncated(d):
        p = dcm_files(d)[2]
        data = open(p, "rb").read()
        open(p, "wb").write(data[: len(data) // 2])

    for name, edit, message in (("mixed", other_patient, "2 different patients"),
                                ("burned", burned_in, "BurnedInAnnotation YES"),
                                ("cut", truncated, "cannot be read completely")):
        d = case(name, edit)
        out = tmp_path / f"out_{name}"
        capsys.readouterr()
        assert main(["deidentify", str(d), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert "OTHER-42" not in err and "Other^Person" not in err
        assert not out.exists()
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-deid-")]
    # burned-in, allowed: written, but not claimed de-identified
    out = tmp_path / "out_burned_ok"
    assert main(["deidentify", str(tmp_path / "burned"), "--out", str(out), "--allow-burned-in"]) == 0
    flags = sorted(pydicom.dcmread(f, stop_before_pixels=True).PatientIdentityRemoved for f in dcm_files(out))
    assert flags == ["NO", "YES", "YES"]
    # an existing, non-empty output folder is never written into
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(NapariSSLError, match="not empty"):
        deidentify([str(ct_study)], str(tmp_path / "full"))
    assert os.listdir(tmp_path / "full") == ["keep.txt"]


@pytest.mark.pacs
def test_orthanc_accepts_the_deidentified_study_by_stow(ct_study, tmp_path, monkeypatch):
    from napari_ssl.io import pacs

    from orthanc import start_orthanc  # tests/orthanc.py

    out = tmp_path / "deid"
    assert _run_cli(ct_study, out, monkeypatch) == 0
    datasets = [pydicom.dcmread(f) for f in dcm_files(out)]
    server = start_orthanc()
    try:
        cfg = tmp_path / "pacs.json"
        import json

        from orthanc import PASSWORD, USER

        cfg.write_text(json.dumps({"servers": [{"url": server.dicomweb_url, "username": USER, "password": PASSWORD, "timeout": 20}]}))
        cfg.chmod(0o600)
        for k in (pacs.ENV_USER, pacs.ENV_PASSWORD, pacs.ENV_TOKEN, pacs.ENV_CA):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv(pacs.ENV_CONFIG, str(cfg))
        monkeypatch.setenv(pacs.ENV_CACHE, str(tmp_path / "cache"))
        res = pacs.store_instances(server.dicomweb_url, datasets)
        assert res["stored"] == len(datasets)
        study = str(datasets[0].StudyInstanceUID)
        series = pacs.search_series(server.dicomweb_url, study)
        assert sorted(s["Modality"] for s in series) == ["CT", "SEG"]
    finally:
        server.stop()
