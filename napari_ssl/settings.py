"""Where napari-ssl keeps its files, and the environment variables that change what it does: one place to look.

  $NAPARI_SSL_HOME      the home folder (default ~/.napari-ssl): runs/ (pretraining runs and models the viewer lists),
                        annotations/ (autosaved drawings), exports/ (the Export widget's default folder)
  $NAPARI_SSL_THREADS   torch threads in a job process (default: torch's own choice)
  $NAPARI_SSL_JOB_NICE  niceness added to the viewer's job processes (default 10; 0: the viewer's priority)
  $NAPARI_SSL_PACS_URL  the DICOMweb URL the Export widget offers
PACS credentials ($NAPARI_SSL_PACS_CONFIG, _USER, _PASSWORD, _TOKEN) and the de-identification key
($NAPARI_SSL_DEID_KEY, $NAPARI_SSL_DEID_KEY_FILE) are read only where they are used (io/), never written anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "NAPARI_SSL_HOME"
THREADS_ENV = "NAPARI_SSL_THREADS"
JOB_NICE_ENV = "NAPARI_SSL_JOB_NICE"
PACS_URL_ENV = "NAPARI_SSL_PACS_URL"


def home() -> Path:
    """$NAPARI_SSL_HOME, else ~/.napari-ssl (read each time: tests and the demo set it at run time)."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".napari-ssl"


def runs_dir() -> Path:
    return home() / "runs"


def annotations_dir() -> Path:
    return home() / "annotations"


def env_int(name: str, default: int) -> int:
    """An integer environment variable; unset or not a number: `default`."""
    try:
        return int(os.environ.get(name, str(default)))
    except ValueError:
        return default
