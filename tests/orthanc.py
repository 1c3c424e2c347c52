"""Start a real Orthanc (Debian packages orthanc + orthanc-dicomweb) on free loopback ports.

Used by the PACS tests: HTTP with basic auth on 127.0.0.1, DICOMweb at /dicom-web, storage in
a temporary folder, stopped (and its folder removed) at the end.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

import requests

PLUGIN_GLOBS = [
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/lib/x86_64-linux-gnu/orthanc/libOrthancDicomWeb.so*",
]
USER = "napari"
PASSWORD = "ssl-test-pass"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_dicomweb_plugin() -> str:
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise FileNotFoundError("Orthanc DICOMweb plugin not found (install the Debian package orthanc-dicomweb)")


@dataclass
class Orthanc:
    process: subprocess.Popen
    workdir: str
    http_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (USER, PASSWORD)

    def upload(self, path: str) -> dict:
        """POST one DICOM file to /instances (Orthanc's own REST API)."""
        with open(path, "rb") as f:
            r = requests.post(f"{self.url}/instances", data=f.read(), auth=self.auth, timeout=30)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_orthanc(timeout: float = 40.0) -> Orthanc:
    exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not os.path.exists(exe):
        raise FileNotFoundError("Orthanc not installed (Debian package orthanc)")
    plugin = find_dicomweb_plugin()
    workdir = tempfile.mkdtemp(prefix="napari-ssl-orthanc-")
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "napari-ssl-test",
        "StorageDirectory": os.path.join(workdir, "db"),
        "IndexDirectory": os.path.join(workdir, "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "HttpServerEnabled": True,
        "SslEnabled": False,
        "StorageCompression": False,
        "HttpTimeout": 30,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 4,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    cfg_path = os.path.join(workdir, "orthanc.json")
    with open(cfg_path, "w") as f:
        json.dump(config, f, indent=1)
    log = open(os.path.join(workdir, "orthanc.log"), "wb")
    proc = subprocess.Popen([exe, cfg_path], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = Orthanc(process=proc, workdir=workdir, http_port=http_port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(os.path.join(workdir, "orthanc.log"), "rb") as f:
                tail = f.read()[-2000:].decode(errors="replace")
            server.stop()
            raise RuntimeError(f"Orthanc exited with code {proc.returncode}:\n{tail}")
        try:
            r = requests.get(f"{server.url}/system", auth=server.auth, timeout=2)
            if r.status_code == 200:
                plugins = requests.get(f"{server.url}/plugins", auth=server.auth, timeout=2).json()
                if "dicom-web" in plugins:
                    return server
                server.stop()
                raise RuntimeError(f"Orthanc started without the DICOMweb plugin (plugins: {plugins})")
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer on port {http_port} within {timeout} s")
