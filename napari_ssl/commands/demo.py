"""`napari-ssl demo`: napari with the plugin and the bundled sample studies.

With a display, one napari window per sample opens and stays open. With no display (or
--headless) it starts its own Xvfb, opens the same viewers off screen, and writes screenshots
(whole window and canvas) plus summary.json to a folder it prints.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import NapariSSLError

HELP = "open napari with the sample studies (no display: runs under its own Xvfb and writes screenshots + summary.json)"
SAMPLES = {  # --sample value -> (npe2 sample key, short name used in file names)
    "mr": ("hippocampus_mr", "mr"),
    "ct": ("ct_liver_seg", "ct"),
}
PLUGIN = "napari-ssl"
SCREEN = "1600x1000x24"
WINDOW_SIZE = (1400, 900)


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="napari-ssl-demo", help="folder for screenshots and summary.json when headless (default ./napari-ssl-demo)")
    parser.add_argument("--headless", action="store_true", help="never show a window: run under Xvfb and write screenshots even if a display is available")
    parser.add_argument("--sample", choices=["mr", "ct", "all"], default="all", help="which sample study to load (default all)")


# --- X server -----------------------------------------------------------------------------
class Xvfb:
    """A private Xvfb on a free display number (Xvfb picks it: -displayfd), stopped on exit."""

    def __init__(self, screen: str = SCREEN, timeout_s: float = 20.0):
        exe = shutil.which("Xvfb")
        if exe is None:
            raise NapariSSLError("no display and no Xvfb: run `bash scripts/install.sh` (installs xvfb) or run with a display")
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            [exe, "-displayfd", str(write_fd), "-screen", "0", screen, "+extension", "GLX", "-nolisten", "tcp"],
            pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        os.close(write_fd)
        number = b""
        deadline = time.monotonic() + timeout_s
        try:
            while not number.endswith(b"\n") and time.monotonic() < deadline:
                ready, _, _ = select.select([read_fd], [], [], 0.2)
                if ready:
                    chunk = os.read(read_fd, 16)
                    if not chunk:
                        break
                    number += chunk
                elif self.proc.poll() is not None:
                    break
        finally:
            os.close(read_fd)
        if not number.strip().isdigit():
            err = self._stop_and_read_stderr()
            raise NapariSSLError(f"could not start Xvfb ({err or 'no display number reported'}); run with a display or check the xvfb package")
        self.display = f":{number.strip().decode()}"

    def _stop_and_read_stderr(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        lines = (err or b"").decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# --- outputs ------------------------------------------------------------------------------
def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_png(path: Path, image) -> None:
    import imageio.v3 as iio

    _write_atomic(path, lambda tmp: iio.imwrite(tmp, image, extension=".png"))


def _layer_summary(layer) -> dict[str, Any]:
    """Geometry and content of a layer, without identifiers (no UIDs, no patient data)."""
    import numpy as np

    info = (layer.metadata or {}).get("napari_ssl", {})
    out: dict[str, Any] = {
        "name": layer.name,
        "type": type(layer).__name__.lower(),
        "shape": [int(s) for s in layer.data.shape],
        "dtype": str(layer.data.dtype),
        "scale": [round(float(s), 6) for s in layer.scale],
        "translate": [round(float(t), 6) for t in layer.translate],
        "modality": info.get("modality") or None,
        "units": info.get("units") or None,
    }
    if out["type"] == "image":
        out["contrast_limits"] = [round(float(c), 3) for c in layer.contrast_limits]
    if out["type"] == "labels":
        values = np.unique(np.asarray(layer.data))
        out["label_values"] = [int(v) for v in values]
        out["segment_names"] = {str(k): v for k, v in (info.get("segment_names") or {}).items()}
        out["voxels_per_label"] = {str(int(v)): int((np.asarray(layer.data) == v).sum()) for v in values if v != 0}
    return out


def _image_stats(image) -> dict[str, Any]:
    import numpy as np

    rgb = np.asarray(image)[..., :3].astype(float)
    return {"size": [int(image.shape[1]), int(image.shape[0])], "pixel_std": round(float(rgb.std()), 3)}


# --- viewers ------------------------------------------------------------------------------
def _open_viewer(sample_key: str, show: bool):
    import napari

    viewer = napari.Viewer(title=f"napari-ssl demo: {sample_key}", show=show)
    viewer.window.resize(*WINDOW_SIZE)
    layers = viewer.open_sample(PLUGIN, sample_key)
    if not layers:
        raise NapariSSLError(f"sample {sample_key} opened no layers")
    image = next((ly for ly in layers if type(ly).__name__ == "Image"), layers[0])
    labels = next((ly for ly in layers if type(ly).__name__ == "Labels"), None)
    _show_best_slice(viewer, image, labels)
    # canonical napari-ssl world axes (see napari_ssl/_napari/layers.py): z superior, y posterior, x left
    viewer.dims.axis_labels = ("S", "P", "L")
    image.contrast_limits_range = [float(image.data.min()), float(image.data.max())]
    viewer.layers.selection.active = image
    _dock_plugin_widgets(viewer)
    viewer.reset_view()
    return viewer


WIDGETS = ("Pretrain", "Annotate & Train", "Export")


def _dock_plugin_widgets(viewer) -> None:
    """Open the plugin's three dock widgets (tabbed, Annotate & Train in front), as from Plugins > napari-ssl."""
    docked = []
    for name in WIDGETS:
        dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=bool(docked))
        docked.append(dock)
    docked[1].raise_()


def _show_best_slice(viewer, image, labels) -> None:
    """The slice showing most label values (then most labelled voxels); the middle one without labels."""
    import numpy as np

    z = (image.data.shape[0] - 1) // 2
    if labels is not None and labels.data.shape[0] == image.data.shape[0]:
        data = np.asarray(labels.data)
        flat = data.reshape(data.shape[0], -1)
        kinds = np.array([len(np.unique(row[row > 0])) for row in flat])
        counts = (flat > 0).sum(axis=1)
        if counts.max() > 0:
            z = int(np.lexsort((counts, kinds))[-1])
    viewer.dims.set_point(0, image.translate[0] + image.scale[0] * z)


def _process_events(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def run_headless(sample_names: list[str], out: Path) -> dict[str, Any]:
    """Open each sample in a napari viewer on the current X display, write screenshots and summary."""
    import napari

    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"napari_version": napari.__version__, "plugin": PLUGIN, "samples": {}}
    for name in sample_names:
        key, short = SAMPLES[name]
        viewer = _open_viewer(key, show=True)
        try:
            _process_events(0.5)
            viewer.status = "Ready"
            canvas = viewer.screenshot(canvas_only=True, flash=False)  # renders the current slice
            _process_events(0.3)
            window = viewer.screenshot(canvas_only=False, flash=False)
            shots = {}
            for kind, img in (("window", window), ("canvas", canvas)):
                fname = f"{short}_{kind}.png"
                _save_png(out / fname, img)
                shots[kind] = {"file": fname, **_image_stats(img)}
            summary["samples"][name] = {
                "sample": key,
                "layers": [_layer_summary(ly) for ly in viewer.layers],
                "slice_shown": [round(float(p), 3) for p in viewer.dims.point],
                "dock_widgets": [name for name in viewer.window.dock_widgets.keys() if any(w in name for w in WIDGETS)],
                "screenshots": shots,
            }
        finally:
            viewer.close()
    _write_atomic(out / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return summary


def run_interactive(sample_names: list[str]) -> None:
    import napari

    viewers = [_open_viewer(SAMPLES[name][0], show=True) for name in sample_names]
    napari.run()
    del viewers


def run(args) -> int:
    sample_names = ["mr", "ct"] if args.sample == "all" else [args.sample]
    if has_display() and not args.headless:
        run_interactive(sample_names)
        return 0
    out = Path(args.out).expanduser().resolve()
    xvfb: Optional[Xvfb] = None
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    try:
        if shutil.which("Xvfb") or not has_display():
            xvfb = Xvfb()
            os.environ["DISPLAY"] = xvfb.display
            os.environ.pop("WAYLAND_DISPLAY", None)
        os.environ["QT_QPA_PLATFORM"] = "xcb"
        os.environ.setdefault("LIBGL_ALWAYS_SOFTWARE", "1")
        summary = run_headless(sample_names, out)
        _quit_qt()
    finally:
        if xvfb is not None:
            xvfb.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for name, s in summary["samples"].items():
        layers = ", ".join(f"{ly['type']} {ly['name']!r} {ly['shape']} @ {ly['scale']} mm" for ly in s["layers"])
        print(f"{name}: {layers}")
    print(f"napari-ssl demo: screenshots and summary.json written to {out}")
    print(str(out))
    sys.stdout.flush()
    return 0


def _quit_qt() -> None:
    """Let Qt tear its windows down while the X server still runs (avoids X errors at exit)."""
    try:
        from qtpy.QtWidgets import QApplication
    except Exception:
        return
    app = QApplication.instance()
    if app is not None:
        app.processEvents()
        app.closeAllWindows()
        app.processEvents()
