"""Qt bindings keep the reference counts of None and True right (Python < 3.12, where they are not immortal).

PySide6 6.12.0 (cp310-abi3 wheels) returns None from every void method, and True/False from libpyside
(Signal.emit, disconnect), without a new reference on Python 3.10/3.11: one reference lost per call.
napari makes hundreds of thousands of such calls, so a passing test run died at exit, in garbage
collection, with "Fatal Python error: none_dealloc" (or bool_dealloc), exit 134. pyproject.toml keeps
PySide6 below 6.12 on Python < 3.12; these tests fail if an installed PySide6 loses references again.
No display needed: QtCore objects only.
"""
from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="None, True and False are immortal from Python 3.12: a lost reference is harmless"
)

QtCore = pytest.importorskip("PySide6.QtCore")


def _refs_lost(obj, call, n: int) -> int:
    """How many references to `obj` `n` calls of `call()` lose (0 when the binding is right).

    A bank of n extra references is held meanwhile, so that a buggy binding cannot take the count to
    zero (and abort the whole test run) before the assertion reports it."""
    bank = [obj] * n
    before = sys.getrefcount(obj)
    for _ in range(n):
        call()
    lost = before - sys.getrefcount(obj)
    del bank
    return lost


def test_void_methods_keep_none_alive():
    obj = QtCore.QObject()
    n = 2000
    assert _refs_lost(None, lambda: obj.setObjectName("x"), n) < n // 10  # void -> None
    assert _refs_lost(None, obj.parent, n) < n // 10  # a null QObject* -> None


def test_signal_emit_keeps_true_alive():
    class Emitter(QtCore.QObject):
        changed = QtCore.Signal(int)

    emitter = Emitter()
    received = []
    n = 200
    assert _refs_lost(True, lambda: emitter.changed.emit(1), n) < n // 10  # emit() returns True
    emitter.changed.connect(received.append)
    assert _refs_lost(True, lambda: emitter.changed.emit(2), n) < n // 10
    assert received == [2] * n
