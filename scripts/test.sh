#!/usr/bin/env bash
# Run the test suite under a real X server (napari's canvas needs OpenGL; offscreen Qt has none).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export QT_QPA_PLATFORM=xcb LIBGL_ALWAYS_SOFTWARE=1 NAPARI_SSL_DATA="${NAPARI_SSL_DATA:-$(cd .. && pwd)/shared/data}"
# The suite needs about 1.2 GB at its peak in $TMPDIR (conftest deletes what passing tests wrote): say so if short.
free_mb=$(df -Pm "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}')
[ "${free_mb:-0}" -ge 2000 ] || echo "[test] warning: only ${free_mb} MB free in ${TMPDIR:-/tmp}; tests write checkpoints there" >&2
export PYTHONFAULTHANDLER=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ -z "${DISPLAY:-}" ]; then
  exec xvfb-run -a -s "-screen 0 1600x1000x24 +extension GLX" python -m pytest "$@"
fi
exec python -m pytest "$@"
