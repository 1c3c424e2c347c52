"""Run pytest and leave with the exit status pytest.main returned (its final one, after every hook).

The interpreter is left with os._exit once pytest has returned, so nothing after pytest (CPython's
final garbage collection, atexit handlers of C extensions) can change the status: it is exactly
pytest's, failures, "no tests ran" (5) and warnings-as-errors included. A passing run once died there
with "Fatal Python error: none_dealloc" (exit 134); the cause was PySide6 6.12.0 losing a reference to
None on every void call on Python < 3.12, fixed by keeping PySide6 below 6.12 there (pyproject.toml)
and checked by tests/test_qt_refcounts.py."""
import os
import sys

import pytest

if __name__ == "__main__":
    status = int(pytest.main(sys.argv[1:]))
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)
