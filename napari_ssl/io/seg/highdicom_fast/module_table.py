"""highdicom's DICOM-standard attribute table, parsed one module at a time.

highdicom answers "is attribute X in IOD Y" and "which attributes does module M hold at its root"
from ``_standard/module_attribute_map.json`` (22 MB, about 100,000 entries), which its
``get_module_attribute_map()`` reads and parses whole the first time it is needed in a process:
0.2-0.4 s of every first DICOM-SEG export, for the few dozen modules of the source and SEG IODs
that are looked at. :func:`install` fills that function's cache with a mapping that has the same
keys and the same values -- each module's list parsed by :mod:`json` from exactly its own bytes of
the same file, memory-mapped -- parsed on first access per module. Nothing is cached on disk and
nothing of highdicom is changed but the value its own cache holds.

The split relies on the file's layout (``json.dump(..., indent=2)``: one top-level key per line at
an indentation of two spaces, its list closed by a line ``"  ]"``); every boundary is checked, and
any other layout, any module whose bytes do not parse to a list, or any other way highdicom loads
its table, falls back to the plain ``json.loads`` of the whole file (by highdicom itself when
nothing was installed), so the values are always those of highdicom's own parse.
"""
from __future__ import annotations

import json
import mmap
import os
import threading
from collections.abc import Mapping
from typing import Any, Iterator, Optional

_lock = threading.RLock()
_KEY = b'\n  "'
_END = b"\n  ]"
_RESOURCE = "_standard/module_attribute_map.json"


def _spans(data) -> Optional[dict[str, tuple[int, int]]]:
    """``{key: (start, end)}`` of each top-level list in `data` (bytes or mmap), or None if the
    layout is not the expected one."""
    pos = data.find(_KEY)
    if pos < 0 or data[:pos].strip() != b"{":
        return None
    spans: dict[str, tuple[int, int]] = {}
    while True:
        colon = data.find(b'": [', pos + 3)
        if colon < 0:
            return None
        try:
            key = json.loads(data[pos + 3:colon + 1])   # the key as a JSON string (fails on a cut or escaped quote)
        except ValueError:
            return None
        if not isinstance(key, str):
            return None
        start = colon + 3
        end = data.find(_END, start)
        if end < 0:
            return None
        end += len(_END)
        spans[key] = (start, end)   # a repeated key keeps its last value, as json.loads does
        if data[end:end + len(_KEY) + 1] == b"," + _KEY:
            pos = end + 1
            continue
        return spans if data[end:].strip() == b"}" else None


class LazyModuleMap(Mapping):
    """Read-only ``{module key: [attribute entries]}``, each list parsed on first access."""

    def __init__(self, data, spans: dict[str, tuple[int, int]]):
        self._data = data   # bytes or a read-only mmap of the file
        self._spans = spans
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            pass
        start, end = self._spans[key]   # KeyError for a module that does not exist, as the dict gives
        with _lock:
            if key in self._values:
                return self._values[key]
            try:
                val = json.loads(self._data[start:end])
            except ValueError:
                val = None
            if not isinstance(val, list):
                self._materialize()
                return self._values[key]
            self._values[key] = val
            return val

    def _materialize(self) -> None:
        """Fall back to the plain parse of the whole file (called with the lock held)."""
        if self._data is None:
            return
        full = json.loads(bytes(self._data).decode("utf-8"))
        self._values = full
        self._spans = {k: (0, 0) for k in full}
        self._data = None

    def __contains__(self, key: object) -> bool:
        return key in self._spans

    def __iter__(self) -> Iterator[str]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)

    @property
    def parsed(self) -> int:
        """How many modules have been parsed so far."""
        return len(self._values)


def lazy_map(path: str) -> Optional[LazyModuleMap]:
    """A :class:`LazyModuleMap` of the JSON file at `path`, or None when its layout is not the expected one."""
    with open(path, "rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):   # empty file, or no mmap here
            data = f.read()
    spans = _spans(data)
    return LazyModuleMap(data, spans) if spans else None


class _Token(bytes):
    """What highdicom's ``pkgutil.get_data`` call returns while :func:`install` runs."""

    def decode(self, *args, **kwargs):
        return _TokenStr(self.path)


class _TokenStr(str):
    pass


class _Shim:
    """Stands in for :mod:`pkgutil` or :mod:`json` inside ``highdicom._standard_utils`` during one call."""

    def __init__(self, real, **overrides):
        self._real = real
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._real, name)


def install() -> bool:
    """Fill highdicom's ``get_module_attribute_map()`` cache with a :class:`LazyModuleMap` in this process.

    Does nothing when highdicom already parsed the table; when its table is not a plain file of the
    expected layout, or its loader works otherwise, highdicom is left to parse it itself. Returns
    whether the lazy map is the one in use.
    """
    import highdicom

    try:
        from highdicom import _standard_utils as su
    except ImportError:   # a private module: highdicom reorganised, let it load its table itself
        return False
    fn = getattr(su, "get_module_attribute_map", None)
    if fn is None or not hasattr(fn, "cache_info") or not hasattr(fn, "cache_clear"):
        return False
    with _lock:
        if fn.cache_info().currsize:
            return isinstance(fn(), LazyModuleMap)
        path = os.path.join(os.path.dirname(highdicom.__file__), *_RESOURCE.split("/"))
        if getattr(su, "json", None) is not json or getattr(su, "pkgutil", None) is None or not os.path.isfile(path):
            return False
        try:
            table = lazy_map(path)
        except OSError:
            table = None
        if table is None:
            return False
        pkgutil = su.pkgutil

        def get_data(package, resource):
            if package == "highdicom" and resource == _RESOURCE:
                token = _Token()
                token.path = path
                return token
            return pkgutil.get_data(package, resource)

        def loads(s, *args, **kwargs):
            return table if isinstance(s, _TokenStr) else json.loads(s, *args, **kwargs)

        su.pkgutil, su.json = _Shim(pkgutil, get_data=get_data), _Shim(json, loads=loads)
        try:
            got = fn()
        except Exception:
            got = None
        finally:
            su.pkgutil, su.json = pkgutil, json
        if got is not table:   # highdicom loads its table some other way: let it do so itself
            fn.cache_clear()
            return False
        return True
