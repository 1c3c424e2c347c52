"""A real PACS round trip: Orthanc + its DICOMweb plugin on loopback, basic auth."""
import json
import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from napari_ssl.cli import main as cli_main
from napari_ssl.errors import NapariSSLError
from napari_ssl.io import load_volume, pacs
from napari_ssl.io.nifti import read_itk_volume
from napari_ssl.io.seg import read_segmentation

from orthanc import PASSWORD, USER, start_orthanc  # tests/orthanc.py (tests/ is on sys.path under pytest)

pytestmark = pytest.mark.pacs


@pytest.fixture(scope="module")
def orthanc():
    server = start_orthanc()
    yield server
    server.stop()
    assert server.process.poll() is not None  # really stopped


@pytest.fixture(scope="module")
def uploaded(orthanc, dcmqi_dir):
    files = sorted((dcmqi_dir / "ct-3slice").glob("*.dcm")) + [dcmqi_dir / "23x38x3" / "multiframe" / "mf.dcm",
                                                                get_testdata_file("eCT_Supplemental.dcm")]
    for f in files:
        assert orthanc.upload(str(f))["Status"] in ("Success", "AlreadyStored")
    return files


@pytest.fixture()
def pacs_env(orthanc, tmp_path, monkeypatch):
    """Credentials in a config file, as a user would set them up (never on the command line)."""
    cfg = tmp_path / "pacs.json"
    cfg.write_text(json.dumps({"servers": [{"url": orthanc.dicomweb_url, "username": USER, "password": PASSWORD, "timeout": 10}]}))
    cfg.chmod(0o600)
    for k in (pacs.ENV_USER, pacs.ENV_PASSWORD, pacs.ENV_TOKEN, pacs.ENV_CA):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(pacs.ENV_CONFIG, str(cfg))
    monkeypatch.setenv(pacs.ENV_CACHE, str(tmp_path / "cache"))
    return orthanc.dicomweb_url


def test_query_studies_and_series_with_filters(uploaded, pacs_env, dcmqi_dir):
    ct = pydicom.dcmread(dcmqi_dir / "ct-3slice" / "01.dcm", stop_before_pixels=True)
    studies = pacs.search_studies(pacs_env)
    assert ct.StudyInstanceUID in {s["StudyInstanceUID"] for s in studies} and len(studies) == 3
    assert all("PatientName" not in s and "PatientID" not in s for s in studies)
    by_date = pacs.search_studies(pacs_env, {"StudyDate": str(ct.StudyDate)})
    assert [s["StudyInstanceUID"] for s in by_date] == [ct.StudyInstanceUID]
    series = pacs.search_series(pacs_env, ct.StudyInstanceUID)
    assert [(s["SeriesInstanceUID"], s["NumberOfSeriesRelatedInstances"]) for s in series] == [(ct.SeriesInstanceUID, 3)]
    assert pacs.search_series(pacs_env, filters={"Modality": "MR"}) == []


def test_pull_series_into_a_volume_identical_to_the_files(uploaded, pacs_env, dcmqi_dir, tmp_path):
    ct = pydicom.dcmread(dcmqi_dir / "ct-3slice" / "01.dcm", stop_before_pixels=True)
    vol = pacs.load_series(pacs_env, ct.SeriesInstanceUID)
    direct = load_volume(dcmqi_dir / "ct-3slice")
    np.testing.assert_array_equal(vol.array, direct.array)
    np.testing.assert_allclose(vol.affine, direct.affine)
    assert vol.series_instance_uid == direct.series_instance_uid and vol.array.dtype == direct.array.dtype

    mf = pydicom.dcmread(dcmqi_dir / "23x38x3" / "multiframe" / "mf.dcm", stop_before_pixels=True)
    out = tmp_path / "pulled"
    rc = cli_main(["pacs", "pull", pacs_env, "--series", str(mf.SeriesInstanceUID), "--out", str(out)])
    assert rc == 0 and os.listdir(out) == [f"{mf.SOPInstanceUID}.dcm"]
    a, b = load_volume(out), load_volume(dcmqi_dir / "23x38x3" / "multiframe" / "mf.dcm")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine)


def test_export_seg_with_stow_and_retrieve_it_back(uploaded, pacs_env, dcmqi_dir, tmp_path, capsys):
    ct = pydicom.dcmread(dcmqi_dir / "ct-3slice" / "01.dcm", stop_before_pixels=True)
    src = pacs.load_series(pacs_env, ct.SeriesInstanceUID)  # export onto what came from the PACS
    lab = read_itk_volume(str(dcmqi_dir / "liver_seg.nrrd"))
    nrrd = dcmqi_dir / "liver_seg.nrrd"
    out = tmp_path / "liver_seg.dcm"
    rc = cli_main(["export-seg", "--labels", str(nrrd), "--source", src.path or os.path.dirname(src.source_paths[0]), "--out", str(out),
                   "--names", "Liver", "--stow", pacs_env])
    assert rc == 0, capsys.readouterr().err
    seg_uid = str(pydicom.dcmread(out, stop_before_pixels=True).SeriesInstanceUID)
    found = pacs.search_series(pacs_env, ct.StudyInstanceUID, {"Modality": "SEG"})
    assert [s["SeriesInstanceUID"] for s in found] == [seg_uid]
    back_dir = tmp_path / "seg_back"
    paths = pacs.retrieve_series(pacs_env, seg_uid, str(back_dir))
    (back, names), = read_segmentation(paths[0])
    (local, _), = read_segmentation(out)
    (real, _), = read_segmentation(dcmqi_dir / "liver.dcm")
    assert names == {1: "Liver"}
    np.testing.assert_array_equal(back.array, local.array)
    np.testing.assert_array_equal(back.array, real.array)
    np.testing.assert_allclose(back.affine, real.affine, atol=1e-3)
    assert lab.array.sum() == back.array.sum()


def test_cli_listings_show_no_patient_identifiers(uploaded, pacs_env, dcmqi_dir, capsys):
    ct = pydicom.dcmread(dcmqi_dir / "ct-3slice" / "01.dcm", stop_before_pixels=True)
    assert cli_main(["pacs", "studies", pacs_env, "--filter", "ModalitiesInStudy=CT", "--json"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out)
    assert ct.StudyInstanceUID in {r["StudyInstanceUID"] for r in rows}
    assert str(ct.PatientName) not in out and str(ct.PatientID) not in out
    assert cli_main(["pacs", "series", pacs_env, "--study", ct.StudyInstanceUID]) == 0
    assert ct.SeriesInstanceUID in capsys.readouterr().out
    assert cli_main(["pacs", "studies", pacs_env, "--filter", "NotAKeyword=1"]) == 2
    assert "not a DICOM keyword" in capsys.readouterr().err


def test_wrong_password_missing_series_and_down_server_are_clear_errors(uploaded, orthanc, pacs_env, dcmqi_dir, monkeypatch, tmp_path):
    ct = pydicom.dcmread(dcmqi_dir / "ct-3slice" / "01.dcm", stop_before_pixels=True)
    monkeypatch.setenv(pacs.ENV_USER, USER)
    monkeypatch.setenv(pacs.ENV_PASSWORD, "wrong-password")
    with pytest.raises(NapariSSLError, match=r"refused the credentials \(HTTP 401\)") as ei:
        pacs.search_studies(pacs_env)
    assert "wrong-password" not in str(ei.value)
    monkeypatch.delenv(pacs.ENV_USER)
    monkeypatch.delenv(pacs.ENV_PASSWORD)

    with pytest.raises(NapariSSLError, match=r"HTTP 404"):
        pacs.retrieve_series(pacs_env, "1.2.3.4.5.6.7", str(tmp_path / "x"), study_instance_uid=ct.StudyInstanceUID)
    with pytest.raises(NapariSSLError, match="not found on the PACS"):
        pacs.retrieve_series(pacs_env, "1.2.3.4.5.6.7", str(tmp_path / "x"))
    assert not os.listdir(tmp_path / "x")

    with pytest.raises(NapariSSLError, match="credentials in the URL"):
        pacs.search_studies(pacs_env.replace("http://", f"http://{USER}:{PASSWORD}@"))
    dead = f"http://127.0.0.1:{orthanc.http_port + 1 if orthanc.http_port < 65535 else 1}/dicom-web"
    with pytest.raises(NapariSSLError, match="cannot reach the PACS"):
        pacs.search_studies(dead)


def test_https_verification_is_on_and_ca_bundle_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv(pacs.ENV_CONFIG, str(tmp_path / "none.json"))
    monkeypatch.delenv(pacs.ENV_CA, raising=False)
    c = pacs.client("https://pacs.invalid/dicom-web")
    assert c._session.verify is True
    monkeypatch.setenv(pacs.ENV_CA, str(tmp_path / "missing.pem"))
    with pytest.raises(NapariSSLError, match="CA bundle not found"):
        pacs.load_settings("https://pacs.invalid/dicom-web")
    cfg = tmp_path / "pacs.json"
    cfg.write_text(json.dumps({"servers": [{"url": "https://pacs.invalid", "token": "t0k", "verify": False}]}))
    monkeypatch.setenv(pacs.ENV_CONFIG, str(cfg))
    monkeypatch.delenv(pacs.ENV_CA)
    with pytest.raises(NapariSSLError, match="not allowed"):
        pacs.load_settings("https://pacs.invalid/dicom-web")


def test_seg_on_a_series_with_rounding_noise_through_the_pacs(orthanc, pacs_env, dcmqi_dir, tmp_path, capsys):
    """Issue 12: an oblique series whose files spell the orientation with different last digits, pulled from
    the PACS, exported with --stow: Orthanc takes the SEG, and it comes back voxel-exact on the pulled series."""
    from napari_ssl.io import write_itk_volume
    from napari_ssl.io.seg.on_source import read_on_source

    from perturbed_series import oblique_series

    files = oblique_series(sorted((dcmqi_dir / "ct-3slice").glob("*.dcm")), tmp_path / "oblique", n_slices=6, new_study=True)
    for f in files:
        assert orthanc.upload(str(f))["Status"] == "Success"
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    src = pacs.load_series(pacs_env, uid)
    assert src.shape == (6, 512, 512) and src.warnings == []
    lab = np.zeros(src.shape, np.uint8)
    lab[1:5, 100:300, 150:350] = 1
    lab[3, 320:360, 200:260] = 2
    nii = tmp_path / "m.nii.gz"
    write_itk_volume(lab, src.affine, nii)
    out = tmp_path / "oblique_seg.dcm"
    rc = cli_main(["export-seg", "--labels", str(nii), "--source", os.path.dirname(src.source_paths[0]), "--out", str(out),
                   "--names", "liver,lesion", "--stow", pacs_env])
    assert rc == 0, capsys.readouterr().err
    seg_uid = str(pydicom.dcmread(out, stop_before_pixels=True).SeriesInstanceUID)
    paths = pacs.retrieve_series(pacs_env, seg_uid, str(tmp_path / "seg_back"))
    (placed, names), = read_on_source(paths[0], src)
    assert names == {1: "liver", 2: "lesion"}
    np.testing.assert_array_equal(placed.array, lab)
