#!/usr/bin/env bash
# Set up a fresh Debian machine (root, Python 3.11): system packages, a virtual environment
# in .venv, and napari-ssl with its dependencies. Safe to run again (skips what is there).
set -euo pipefail
cd "$(dirname "$0")/.."
SYS_PKGS=(xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 libxcb-cursor0
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0
  libxcb-xinerama0 libxcb-xkb1 libxcb-xfixes0 libxkbcommon0 libfontconfig1 libdbus-1-3 libxrender1
  libxi6 libsm6 libice6 fonts-dejavu-core orthanc orthanc-dicomweb dicom3tools)
missing=()
for p in "${SYS_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[install] system packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts Orthanc as a service on install; the tests run their own on loopback.
  (command -v service >/dev/null && $SUDO service orthanc stop >/dev/null 2>&1) || true
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned to the build this project is tested with (pip takes it from a local cache when there is one)
python -c "import torch, torchvision" 2>/dev/null || python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[test]"
echo "[install] done: $(python -c 'import napari_ssl, torch, napari; print("napari-ssl", napari_ssl.__version__, "torch", torch.__version__, "napari", napari.__version__)')"
