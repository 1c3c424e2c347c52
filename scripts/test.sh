#!/usr/bin/env bash
# Run the test suite under a real X server (napari's canvas needs OpenGL; offscreen Qt has none).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export QT_QPA_PLATFORM=xcb LIBGL_ALWAYS_SOFTWARE=1 NAPARI_SSL_DATA="${NAPARI_SSL_DATA:-$(cd .. && pwd)/shared/data}"
export PYTHONFAULTHANDLER=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ -z "${DISPLAY:-}" ]; then
  exec xvfb-run -a -s "-screen 0 1600x1000x24 +extension GLX" python -m pytest "$@"
fi
exec python -m pytest "$@"
