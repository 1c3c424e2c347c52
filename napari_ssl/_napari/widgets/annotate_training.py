"""Train (and Stop) in Annotate & Train: the job's config from the annotations, its start off the GUI thread,
its typed events shown as they come, and its end. Part of :class:`AnnotateTrainWidget` (a mixin: the methods
share the widget's state).
"""
from __future__ import annotations

import os

import numpy as np

from ...train.events import Failed, Finished, Loss, Prediction, Progress, Status, Trained
from . import result_layers
from .common import layer_volume, safe_name, timestamp
from .runs_list import runs_dir


class TrainingMixin:
    EVENT_HANDLERS = {Loss: "_on_loss", Progress: "_on_progress", Trained: "_on_trained", Status: "_on_status",
                      Prediction: "show_prediction"}

    @property
    def running(self) -> bool:
        """A training job is starting (its inputs being written) or running."""
        starting = self._starting
        return (starting is not None and starting.running) or (self.job is not None and self.job.running)

    @property
    def results_pending(self) -> bool:
        """Results still being read or turned into layers (the job itself may have ended)."""
        return bool((self._loading is not None and self._loading.running) or self._staged.busy)

    def _train_or_stop(self) -> None:
        if self.job is not None and self.job.running:
            self.stop_job(self.train_button)
        else:
            self.train()

    def build_config(self) -> dict:
        if self.labels_layer is None or self.image_layer is None:
            raise ValueError("create a labels layer and annotate a few slices first")
        mask = self.annotated_mask()
        if not mask.any():
            raise ValueError("no slice is annotated: paint the structure on a few slices (or mark slices empty)")
        # saved in the background (never waited for here: compressing a full CT's labels took seconds, with the
        # viewer frozen)
        self.autosave.save_pending()
        image = layer_volume(self.image_layer)
        # not copied here (77 MB of a full CT: up to 0.8 s of the event loop on a loaded machine): train() writes it to
        # a file from the results thread right after the click (offload_arrays), and fill between reads it there too;
        # a stroke painted during those few hundred milliseconds may or may not be in this round
        labels = np.asarray(self.labels_layer.data)
        name = safe_name(self.image_layer.name, "image")
        out = runs_dir() / f"model-{name}-{timestamp()}"
        ft = {"images": [image], "labels": [labels], "out": str(out), "classes": self.class_names(),
              "empty_slices": [self.empty_slices()], "preview_every_s": float(self.preview_every_s),
              **self.controls.training_options(), **self.controls.start_from(self.last_model)}
        semi = self.semi_supervised.isChecked()
        cfg = {"finetune": ft,
               "predict": {"image": image, "out": str(runs_dir() / ".predictions" / out.name),
                           "annotated_slices": mask, "labels": labels, "keep_connected": semi,
                           "fill_between": semi, "n": 5, "device": self.controls.device_value()}}
        if self.threads:
            cfg["threads"] = int(self.threads)
        return cfg

    def train(self) -> None:
        if self.results_pending:
            return
        config = self.new_job_config()
        if config is None:
            return
        self.plot.clear()
        self.last_result = None
        how = "warm start" if "init_model" in config["finetune"] else (
            "pretrained encoder" if config["finetune"].get("encoder_weights") else "from scratch")
        from ...data.auto_config import slow_setting_warning

        ft = config["finetune"]
        slow = slow_setting_warning(image_size=ft.get("image_size"),
                                    encoder="resnet18" if (ft.get("encoder_weights") or ft.get("init_model")) else None, steps=ft.get("steps"),
                                    devices=ft.get("devices"), batch_size=int(ft.get("batch_size") or 8))
        self.settings_label.setText("Settings: chosen from the scan and the drawing...")
        self.show_settings_note(slow or "")
        self._n_train_slices = int(config['predict']['annotated_slices'].sum())
        self._train_round += 1
        self.train_button.setEnabled(False)
        self.status.setText(f"Starting the training ({how}) on {self._n_train_slices} annotated slices...")
        self.controls.set_bar(0, 0, "starting")  # 0 of 1 until the first step (not Qt's animated busy bar)
        # the image and labels go to the job as files written off the GUI thread (see jobs.offload_arrays)
        from ...train.jobs import offload_arrays

        staging = os.path.join(config["predict"]["out"], "inputs")
        self._starting = result_layers.BackgroundCall(
            offload_arrays, (config, staging), parent=self,
            done=lambda small: self._start_job(small, how), failed=self._start_failed)
        if self.fill_between_auto and self._filling is None:
            self.fill_between(quiet=True, snapshot=(config["predict"]["labels"], config["predict"]["annotated_slices"]))
        self._prepare_result_layers()  # (any the user removed: made again, hidden)

    def _start_failed(self, message: str) -> None:
        self.progress_bar.setVisible(False)
        self.train_button.setEnabled(True)
        self._error(f"could not start the training: {message}")

    def _start_job(self, config: dict, how: str) -> None:
        self.start_job("napari_ssl.train.jobs:train_predict_job", config, label=f"Fine-tuning ({how})")
        self.train_button.setText("Stop")
        self._update_buttons()

    # --- the job's events
    def _on_loss(self, ev: Loss) -> None:
        self.plot.add_loss(ev)

    def _on_progress(self, ev: Progress) -> None:
        total, step = ev.total_steps, int(ev.step or 0)
        if self.stop_requested or not self.job.progress_due:
            return
        from ...progress_text import step_text

        what = f"Training the model on {getattr(self, '_n_train_slices', 0)} annotated slices"
        self.status.setText(step_text(what, step, total, self.job.seconds_left) + "; then the whole image is predicted.")
        if total:
            self.controls.set_bar(step, int(total), "training: %p%")

    def _on_trained(self, ev: Trained) -> None:
        self.last_model = ev.out
        self.status.setText("Trained; predicting the whole image...")
        self.controls.set_bar(0, 0, "predicting")

    def _on_status(self, ev: Status) -> None:
        message = str(ev.message)
        if message.startswith("settings: "):
            self.settings_label.setText("Settings: " + message[len("settings: "):])
            return
        self.status.setText(message)
        if ev.phase == "predict" and ev.total:
            self.controls.set_bar(int(ev.done), int(ev.total), "predicting: %p%")

    def _on_finished(self, ev: Finished | Failed) -> None:
        self.progress_bar.setVisible(False)
        if isinstance(ev, Finished) and self.results_pending:  # the layers are still on their way: finish after them
            self._finish_pending = ev
            return
        self._finish(ev)

    def _finish(self, ev: Finished | Failed) -> None:
        self._finish_pending = None
        self.last_result = ev
        self.train_button.setEnabled(True)
        self.train_button.setText("Train again" if self.last_model else "Train")
        if isinstance(ev, Finished):
            self.last_model = ev.out or self.last_model
            self.warm_start.setEnabled(bool(self.last_model))
            self.warm_start.setChecked(bool(self.last_model))
            top = f" Top suggestion: slice {self.suggestions[0]['slice']}." if self.suggestions else ""
            self.status.setText(("Stopped; last weights saved. " if ev.stopped else "Done. ") +
                                f"Model: {self.last_model}.{top}{self.uncertainty_hint()}")
        else:
            self._error(ev.message or "training failed")
        self._update_buttons()
