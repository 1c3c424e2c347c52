"""`napari-ssl demo`: the whole loop on the bundled sample studies, through the plugin's widgets.

On each sample (MR hippocampus crop, then the 3-slice CT with its liver SEG): pretrain briefly (MR),
annotate a few slices copied from the sample's labels, fill between slices (instant), fine-tune and predict
with uncertainty, go to the suggested next slice, export (DICOM-SEG for the CT, NIfTI). See
napari_ssl/_napari/demo_loop.py.

With a display, one napari window per sample opens and stays open with every result layer. With no
display (or --headless) it starts its own Xvfb, runs the same loop off screen, and writes a screenshot per
stage plus summary.json (Dice against the sample's labels, seconds per stage) to a folder it prints.
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
from ..io.atomic import atomic_write_bytes
from ..settings import HOME_ENV

HELP = "run the whole loop on the sample studies in napari (no display: under its own Xvfb, screenshots + summary.json)"
SAMPLES = {  # --sample value -> (npe2 sample key, short name used in file names)
    "mr": ("hippocampus_mr", "mr"),
    "ct": ("ct_liver_seg", "ct"),
}
PLUGIN = "napari-ssl"
SCREEN = "1600x1000x24"
WINDOW_SIZE = (1400, 900)


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="napari-ssl-demo", help="folder for screenshots and summary.json when headless (default ./napari-ssl-demo)")
    parser.add_argument("--headless", action="store_true",
                        help="never show a window: run under Xvfb and write screenshots even if a display is available")
    parser.add_argument("--sample", choices=["mr", "ct", "all"], default="all", help="which sample study to load (default all)")
    parser.add_argument("--quick", action="store_true", help="a few training steps only (checks the loop, not the result)")


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
def _save_png(path: Path, image) -> None:
    import imageio.v3 as iio

    atomic_write_bytes(path, iio.imwrite("<bytes>", image, extension=".png"))


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


def loop_settings(name: str, quick: bool = False):
    """What the demo does on each sample (short runs: the whole demo stays within a few minutes on a CPU)."""
    from .._napari.demo_loop import LoopSettings

    if name == "mr":  # 35 slices of a hippocampus crop: pretrain briefly on it, 3 annotated slices
        return LoopSettings(annotate_slices=3, pretrain_steps=10 if quick else 30, finetune_steps=10 if quick else 60,
                            image_size=0, export_nifti=True)
    # the 3-slice CT with its liver SEG: 2 annotated slices, the middle one filled / predicted; DICOM-SEG export
    return LoopSettings(annotate_slices=2, pretrain_steps=0, finetune_steps=10 if quick else 40,
                        image_size=64 if quick else 96, export_seg=True, export_nifti=True)


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()]}


class _SampleRunner:
    """Runs the samples one after the other, each in its own viewer, inside Qt's event loop."""

    def __init__(self, sample_names: list[str], out: Path, show: bool, quick: bool, headless: bool, summary: dict[str, Any]):
        self.queue = list(sample_names)
        self.out, self.show, self.quick, self.headless, self.summary = out, show, quick, headless, summary
        self.loops: list[Any] = []
        self.viewers: list[Any] = []
        self.done = False

    def start_next(self) -> None:
        from qtpy.QtCore import QTimer

        from .._napari.demo_loop import DemoLoop

        if not self.queue:
            self.done = True
            return
        name = self.queue.pop(0)
        key, short = SAMPLES[name]
        viewer = _open_viewer(key, show=self.show)
        self.viewers.append(viewer)
        record: dict[str, Any] = {"sample": key, "screenshots": {}}
        self.summary["samples"][name] = record
        loop = DemoLoop(viewer, short, loop_settings(name, self.quick), str(self.out / "exports"),
                        on_stage=lambda stage: self._on_stage(viewer, short, record["screenshots"], stage),
                        on_done=lambda lp: self._on_done(viewer, record, lp), log=lambda m: print(m, flush=True))
        self.loops.append(loop)
        QTimer.singleShot(200, loop.start)

    def _on_stage(self, viewer, short: str, shots: dict[str, Any], stage: str) -> None:
        if not self.headless:
            return
        _process_events(0.4)  # let the canvas render what the stage changed
        viewer.status = f"napari-ssl demo: {stage.replace('_', ' ')}"
        img = viewer.screenshot(canvas_only=False, flash=False)
        fname = f"{short}_{len(shots):02d}_{stage}.png"
        _save_png(self.out / fname, img)
        shots[stage] = {"file": fname, **_image_stats(img)}
        if stage == "opened":
            canvas = viewer.screenshot(canvas_only=True, flash=False)
            _save_png(self.out / f"{short}_opened_canvas.png", canvas)
            shots["opened_canvas"] = {"file": f"{short}_opened_canvas.png", **_image_stats(canvas)}

    def _on_done(self, viewer, record: dict[str, Any], loop) -> None:
        from qtpy.QtCore import QTimer

        record.update(loop.summary)
        record["layers"] = [_layer_summary(ly) for ly in viewer.layers]
        record["dock_widgets"] = [n for n in viewer.window.dock_widgets.keys() if any(w in n for w in WIDGETS)]
        if self.headless:
            viewer.close()
        QTimer.singleShot(0, self.start_next)

    def wait(self, seconds: float = 1800) -> None:
        """Headless: drive Qt's events until every sample is done."""
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        deadline = time.monotonic() + seconds
        while not self.done and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.02)
        if not self.done:
            raise NapariSSLError("the demo did not finish within 30 minutes")


def _run_loops(sample_names: list[str], out: Path, show: bool, quick: bool, headless: bool) -> dict[str, Any]:
    """Run the loop on each sample in turn (its own viewer); headless: a screenshot per stage, viewers closed."""
    import napari

    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"napari_version": napari.__version__, "plugin": PLUGIN, "machine_before": _machine(),
                               "samples": {}}
    t0 = time.monotonic()
    runner = _SampleRunner(sample_names, out, show, quick, headless, summary)
    runner.start_next()
    if not headless:
        napari.run()  # the viewers stay open with every result layer; the loops run inside the event loop
    else:
        runner.wait()
    summary["total_seconds"] = round(time.monotonic() - t0, 1)
    summary["machine_after"] = _machine()
    errors = {n: s["error"] for n, s in summary["samples"].items() if s.get("error")}
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    if errors:
        raise NapariSSLError("; ".join(f"{n}: {e}" for n, e in errors.items()) + f" (details in {out / 'summary.json'})")
    return summary


def run_headless(sample_names: list[str], out: Path, quick: bool = False) -> dict[str, Any]:
    return _run_loops(sample_names, out, show=True, quick=quick, headless=True)


def run_interactive(sample_names: list[str], out: Path, quick: bool = False) -> dict[str, Any]:
    return _run_loops(sample_names, out, show=True, quick=quick, headless=False)


def _print_summary(summary: dict[str, Any]) -> None:
    for name, s in summary["samples"].items():
        d, f = s.get("dice_prediction") or {}, s.get("dice_fill_between") or {}
        line = f"{name}: annotated slices {s.get('annotated_slices')} of {s.get('slices')}; Dice of the prediction vs the sample's labels: "
        line += f"{d.get('unannotated_slices')} on the other slices, {d.get('all_slices')} on all"
        if isinstance(f, dict) and f:
            line += f" (fill between slices: {f.get('unannotated_slices')} / {f.get('all_slices')})"
        line += f"; exported {', '.join(e['file'] for e in s.get('exports', []))}; {s.get('total_seconds')} s"
        print(line)
    print(f"demo finished in {summary['total_seconds']} s "
          f"(load average {summary['machine_after']['load_average'][0]} on {summary['machine_after']['cpus']} CPUs)")


def run(args) -> int:
    sample_names = ["mr", "ct"] if args.sample == "all" else [args.sample]
    out = Path(args.out).expanduser().resolve()
    # runs, models and autosaved annotations of the demo stay in its own folder unless the user chose a home
    os.environ.setdefault(HOME_ENV, str(out / "home"))
    if has_display() and not args.headless:
        summary = run_interactive(sample_names, out, quick=args.quick)
        _print_summary(summary)
        return 0
    xvfb: Optional[Xvfb] = None
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    try:
        if shutil.which("Xvfb") or not has_display():
            xvfb = Xvfb()
            os.environ["DISPLAY"] = xvfb.display
            os.environ.pop("WAYLAND_DISPLAY", None)
        os.environ["QT_QPA_PLATFORM"] = "xcb"
        os.environ.setdefault("LIBGL_ALWAYS_SOFTWARE", "1")
        summary = run_headless(sample_names, out, quick=args.quick)
        _quit_qt()
    finally:
        if xvfb is not None:
            xvfb.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _print_summary(summary)
    print(f"napari-ssl demo: a screenshot per stage and summary.json written to {out}")
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
