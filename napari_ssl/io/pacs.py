"""A PACS over DICOMweb (dicomweb-client): QIDO-RS search, WADO-RS retrieve, STOW-RS store.

Credentials never come from the command line (it ends up in shell history and `ps`):
  * environment: NAPARI_SSL_PACS_USER + NAPARI_SSL_PACS_PASSWORD, or NAPARI_SSL_PACS_TOKEN
    (bearer), NAPARI_SSL_PACS_CA_BUNDLE (a CA bundle for TLS);
  * or a JSON file, $NAPARI_SSL_PACS_CONFIG or ~/.config/napari-ssl/pacs.json::

      {"servers": [{"url": "https://pacs.example.org/dicom-web",
                    "username": "me", "password": "...",      # or "token": "..."
                    "ca_bundle": "/etc/ssl/hospital-ca.pem", "timeout": 30}]}

    The entry whose url is the longest prefix of the requested URL applies.
TLS certificates are always verified (``"verify": false`` in the file is refused for
non-loopback hosts). Every failure is one NapariSSLError line: unreachable server,
timeout, TLS failure, 401/403/404/5xx.
"""
from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any, Iterable, Optional
from urllib.parse import urlparse

from ..errors import NapariSSLError
from .atomic import atomic_path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
ENV_CONFIG = "NAPARI_SSL_PACS_CONFIG"
ENV_USER = "NAPARI_SSL_PACS_USER"
ENV_PASSWORD = "NAPARI_SSL_PACS_PASSWORD"
ENV_TOKEN = "NAPARI_SSL_PACS_TOKEN"
ENV_CA = "NAPARI_SSL_PACS_CA_BUNDLE"
ENV_CACHE = "NAPARI_SSL_CACHE"


@dataclass
class PacsSettings:
    url: str
    username: Optional[str] = None
    password: Optional[str] = None
    token: Optional[str] = None
    ca_bundle: Optional[str] = None
    timeout: float = DEFAULT_TIMEOUT
    source: str = "none"  # where the credentials came from (for messages; never the secret)


def config_path() -> str:
    return os.environ.get(ENV_CONFIG) or os.path.join(os.path.expanduser("~"), ".config", "napari-ssl", "pacs.json")


def _is_loopback(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def _check_url(url: str) -> str:
    p = urlparse(url)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise NapariSSLError(f"{url!r} is not a DICOMweb URL; give e.g. https://pacs.example.org/dicom-web")
    if p.username or p.password:
        raise NapariSSLError(
            f"do not put credentials in the URL (they end up in shell history); put them in {config_path()} "
            f"or the {ENV_USER}/{ENV_PASSWORD} environment variables"
        )
    return url.rstrip("/")


def load_settings(url: str) -> PacsSettings:
    """Credentials and TLS options for `url`, from the environment or the config file."""
    url = _check_url(url)
    s = PacsSettings(url=url)
    path = config_path()
    if os.path.isfile(path):
        try:
            with open(path) as f:
                cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise NapariSSLError(f"cannot read the PACS config {path}: {exc}") from None
        servers = cfg.get("servers", []) if isinstance(cfg, dict) else []
        best = None
        for entry in servers:
            prefix = str(entry.get("url", "")).rstrip("/")
            if prefix and (url == prefix or url.startswith(prefix + "/")) and (best is None or len(prefix) > len(best[0])):
                best = (prefix, entry)
        if best is not None:
            e = best[1]
            s.username, s.password, s.token = e.get("username"), e.get("password"), e.get("token")
            s.ca_bundle = e.get("ca_bundle")
            s.timeout = float(e.get("timeout", DEFAULT_TIMEOUT))
            if e.get("verify") is False and not _is_loopback(url):
                raise NapariSSLError(f"{path}: \"verify\": false is not allowed for {urlparse(url).hostname}; "
                                     "give the server's CA as \"ca_bundle\" instead")
            s.source = path
            if (s.password or s.token) and os.name == "posix" and os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH):
                log.warning("%s holds PACS credentials and is readable by other users; run: chmod 600 %s", path, path)
    if os.environ.get(ENV_TOKEN):
        s.token, s.username, s.password, s.source = os.environ[ENV_TOKEN], None, None, f"${ENV_TOKEN}"
    elif os.environ.get(ENV_USER):
        s.username, s.password, s.token, s.source = os.environ[ENV_USER], os.environ.get(ENV_PASSWORD, ""), None, f"${ENV_USER}/${ENV_PASSWORD}"
    if os.environ.get(ENV_CA):
        s.ca_bundle = os.environ[ENV_CA]
    if s.ca_bundle and not os.path.isfile(os.path.expanduser(s.ca_bundle)):
        raise NapariSSLError(f"CA bundle not found: {s.ca_bundle}")
    if (s.password or s.token) and urlparse(url).scheme == "http" and not _is_loopback(url):
        log.warning("sending PACS credentials over plain http to %s; use https", urlparse(url).hostname)
    return s


def client(url: str, settings: Optional[PacsSettings] = None):
    """A configured ``dicomweb_client.DICOMwebClient`` (auth, TLS verification, timeout)."""
    import requests
    from dicomweb_client import DICOMwebClient

    s = settings or load_settings(url)
    session = requests.Session()
    session.verify = os.path.expanduser(s.ca_bundle) if s.ca_bundle else True
    headers = None
    if s.token:
        headers = {"Authorization": f"Bearer {s.token}"}
    elif s.username:
        session.auth = (s.username, s.password or "")
    c = DICOMwebClient(url=s.url, session=session, headers=headers, timeout=s.timeout)
    c._napari_ssl_settings = s  # for error messages
    return c


def _fail(exc: BaseException, url: str, what: str, settings: Optional[PacsSettings] = None) -> NapariSSLError:
    """One-line error for a failed DICOMweb request."""
    import requests

    host = urlparse(url).netloc
    if isinstance(exc, requests.exceptions.SSLError):
        return NapariSSLError(f"TLS certificate of {host} could not be verified; give its CA bundle (\"ca_bundle\" in {config_path()} or ${ENV_CA})")
    if isinstance(exc, requests.exceptions.Timeout):
        t = settings.timeout if settings else DEFAULT_TIMEOUT
        return NapariSSLError(f"the PACS at {host} did not answer within {t:g} s while trying to {what}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return NapariSSLError(f"cannot reach the PACS at {host} (connection failed); check the URL and that the server is running")
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code == 401:
            where = settings.source if settings and settings.source != "none" else f"{config_path()} or ${ENV_USER}/${ENV_PASSWORD}"
            return NapariSSLError(f"the PACS at {host} refused the credentials (HTTP 401) to {what}; check them in {where}")
        if code == 403:
            return NapariSSLError(f"the PACS at {host} does not allow this account to {what} (HTTP 403)")
        if code == 404:
            return NapariSSLError(f"not found on the PACS at {host} (HTTP 404) trying to {what}; check the UIDs and the DICOMweb URL")
        if 500 <= code < 600:
            return NapariSSLError(f"the PACS at {host} failed (HTTP {code}) trying to {what}; try again or ask its administrator")
        return NapariSSLError(f"the PACS at {host} answered HTTP {code} trying to {what}")
    if isinstance(exc, requests.exceptions.RequestException):
        return NapariSSLError(f"request to the PACS at {host} failed trying to {what}: {type(exc).__name__}")
    return NapariSSLError(f"DICOMweb error trying to {what} at {host}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def _call(c, what: str, fn, *args, **kwargs):
    import requests

    try:
        return fn(*args, **kwargs)
    except NapariSSLError:
        raise
    except (requests.exceptions.RequestException, ValueError, OSError) as exc:
        raise _fail(exc, c.base_url, what, getattr(c, "_napari_ssl_settings", None)) from None


# What the listings show: no patient names, IDs or birth dates.
STUDY_FIELDS = {"StudyInstanceUID": "0020000D", "StudyDate": "00080020", "StudyDescription": "00081030", "ModalitiesInStudy": "00080061",
                "NumberOfStudyRelatedSeries": "00201206", "NumberOfStudyRelatedInstances": "00201208"}
SERIES_FIELDS = {"SeriesInstanceUID": "0020000E", "StudyInstanceUID": "0020000D", "Modality": "00080060", "SeriesNumber": "00200011",
                 "SeriesDescription": "0008103E", "NumberOfSeriesRelatedInstances": "00201209"}


def _simplify(item: dict, fields: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kw, tag in fields.items():
        vals = item.get(tag, {}).get("Value")
        if not vals:
            out[kw] = None
        elif len(vals) == 1 or kw not in ("ModalitiesInStudy",):
            out[kw] = vals[0] if not isinstance(vals[0], dict) else str(vals[0])
        else:
            out[kw] = list(vals)
    return out


def parse_filters(pairs: Iterable[str]) -> dict[str, str]:
    """``["Modality=CT", "StudyDate=20200101-20201231"]`` -> dict; a clear error for anything else."""
    from pydicom.datadict import tag_for_keyword

    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise NapariSSLError(f"filter {p!r}: write KEYWORD=VALUE, e.g. ModalitiesInStudy=CT")
        k, v = p.split("=", 1)
        k = k.strip()
        if tag_for_keyword(k) is None:
            raise NapariSSLError(f"filter {k!r} is not a DICOM keyword (e.g. StudyDate, ModalitiesInStudy, Modality, StudyDescription)")
        out[k] = v.strip()
    return out


def search_studies(url: str, filters: Optional[dict[str, str]] = None, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """QIDO-RS studies matching `filters` (DICOM keyword -> value), as small dicts."""
    c = client(url)
    res = _call(c, "search studies", c.search_for_studies, search_filters=filters or None, limit=limit, fields=list(STUDY_FIELDS))
    return [_simplify(r, STUDY_FIELDS) for r in res]


def search_series(url: str, study_instance_uid: Optional[str] = None, filters: Optional[dict[str, str]] = None,
                  limit: Optional[int] = None) -> list[dict[str, Any]]:
    """QIDO-RS series (of one study, or all) matching `filters`."""
    c = client(url)
    res = _call(c, "search series", c.search_for_series, study_instance_uid=study_instance_uid, search_filters=filters or None, limit=limit,
                fields=list(SERIES_FIELDS))
    return [_simplify(r, SERIES_FIELDS) for r in res]


def find_study_of_series(url: str, series_instance_uid: str) -> str:
    found = search_series(url, filters={"SeriesInstanceUID": series_instance_uid})
    if not found:
        raise NapariSSLError(f"series {series_instance_uid} not found on the PACS at {urlparse(url).netloc}")
    return str(found[0]["StudyInstanceUID"])


def _write_atomic(ds, folder: str) -> str:
    path = os.path.join(folder, f"{ds.SOPInstanceUID}.dcm")  # UIDs, never patient data, in file names
    with atomic_path(path, suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def retrieve_series(url: str, series_instance_uid: str, out_dir: str, study_instance_uid: Optional[str] = None) -> list[str]:
    """WADO-RS: every instance of a series written to `out_dir` as <SOPInstanceUID>.dcm (each atomically)."""
    c = client(url)
    study = study_instance_uid or find_study_of_series(url, series_instance_uid)
    os.makedirs(out_dir, exist_ok=True)
    paths = []

    def _pull():
        for ds in c.iter_series(study_instance_uid=study, series_instance_uid=series_instance_uid):
            paths.append(_write_atomic(ds, out_dir))

    _call(c, f"retrieve series {series_instance_uid}", _pull)
    if not paths:
        raise NapariSSLError(f"series {series_instance_uid} has no instances on the PACS at {urlparse(url).netloc}")
    return paths


def cache_dir() -> str:
    return os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "napari-ssl")


def load_series(url: str, series_instance_uid: str, study_instance_uid: Optional[str] = None, folder: Optional[str] = None, canonical: bool = True):
    """Retrieve a series (WADO-RS) into a Volume, through the normal DICOM reader.

    Instances are kept under `folder` (default: the napari-ssl cache, per series UID), so the
    Volume is exactly what reading those files directly gives and can be exported as SEG.
    """
    from . import load_volume

    folder = folder or os.path.join(cache_dir(), "dicomweb", series_instance_uid)
    retrieve_series(url, series_instance_uid, folder, study_instance_uid=study_instance_uid)
    return load_volume(folder, canonical=canonical)


def store_instances(url: str, datasets: list) -> dict[str, Any]:
    """STOW-RS: store datasets (e.g. a SEG); a clear error if the server rejects any of them."""
    c = client(url)
    study = str(datasets[0].StudyInstanceUID) if datasets else None
    resp = _call(c, "store instances", c.store_instances, datasets=datasets, study_instance_uid=study)
    failed = resp.get("FailedSOPSequence") if resp is not None else None
    if failed:
        reasons = sorted({str(i.get("FailureReason", "?")) for i in failed})
        raise NapariSSLError(f"the PACS rejected {len(failed)} of {len(datasets)} instance(s) (failure reason {', '.join(reasons)})")
    stored = resp.get("ReferencedSOPSequence") if resp is not None else None
    return {"stored": len(stored) if stored is not None else len(datasets)}
