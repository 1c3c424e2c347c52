"""Run pytest and leave with the exit status pytest.main returned (its final one, after every hook).

The interpreter is left with os._exit once pytest has returned: a passing run once died afterwards in
CPython's final garbage collection ("Fatal Python error: none_dealloc", exit 134) on C-extension objects
(Qt / OpenGL) still alive at shutdown. Nothing of pytest's runs after that point, so the status is
exactly pytest's, failures, "no tests ran" (5) and warnings-as-errors included."""
import os
import sys

import pytest

if __name__ == "__main__":
    status = int(pytest.main(sys.argv[1:]))
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)
