"""highdicom's DICOM-standard attribute table, parsed one module at a time.

highdicom answers "is attribute X in IOD Y" and "which attributes does module M hold at its root"
from ``_standard/module_attribute_map.json`` (22 MB, about 100,000 entries), which its
``get_module_attribute_map()`` parses whole the first time it is needed in a process: 0.2-0.4 s of
every first DICOM-SEG export, for the few dozen modules of the source and SEG IODs that are looked
at. :func:`install` makes that function return a mapping with the same keys and the same values
(each module's list parsed by :mod:`json` from exactly its own bytes of the same file), parsed on
first access per module. Nothing is cached on disk and nothing of highdicom is changed but the
value its own cache holds.

The split relies on the file's layout (``json.dump(..., indent=2)``: one top-level key per line at
an indentation of two spaces, its list closed by a line ``"  ]"``); every boundary is checked, and
any other layout, or any module whose bytes do not parse to a list, falls back to the plain
``json.loads`` of the whole file, so the values are always those of highdicom's own parse.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any, Iterator, Optional

_lock = threading.Lock()
_KEY = '\n  "'
_END = "\n  ]"


def _spans(text: str) -> Optional[dict[str, tuple[int, int]]]:
    """``{key: (start, end)}`` of each top-level list in `text`, or None if the layout is not the expected one."""
    pos = text.find(_KEY)
    if pos < 0 or text[:pos].strip() != "{":
        return None
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    while True:
        try:
            key, i = decoder.raw_decode(text, pos + 3)
        except ValueError:
            return None
        if not isinstance(key, str) or text[i:i + 3] != ": [":
            return None
        end = text.find(_END, i)
        if end < 0:
            return None
        end += len(_END)
        spans[key] = (i + 2, end)   # a repeated key keeps its last value, as json.loads does
        if text.startswith("," + _KEY, end):
            pos = end + 1
            continue
        return spans if text[end:].strip() == "}" else None


class LazyModuleMap(Mapping):
    """Read-only ``{module key: [attribute entries]}``, each list parsed on first access."""

    def __init__(self, text: str, spans: dict[str, tuple[int, int]]):
        self._text: Optional[str] = text
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
            if self._text is None:
                raise KeyError(key)
            try:
                val = json.loads(self._text[start:end])
            except ValueError:
                val = None
            if not isinstance(val, list):
                self._materialize()
                return self._values[key]
            self._values[key] = val
            return val

    def _materialize(self) -> None:
        """Fall back to highdicom's own parse of the whole file (called with the lock held)."""
        full = json.loads(self._text)
        self._values = full
        self._spans = {k: (0, 0) for k in full}
        self._text = None

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


class _Json:
    """Stands in for :mod:`json` inside ``highdicom._standard_utils`` during one call."""

    def __init__(self, real):
        self._real = real

    def loads(self, s, *args, **kwargs):
        if not args and not kwargs and isinstance(s, str):
            spans = _spans(s)
            if spans:
                return LazyModuleMap(s, spans)
        return self._real.loads(s, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


def install() -> bool:
    """Make highdicom's ``get_module_attribute_map()`` return a :class:`LazyModuleMap` in this process.

    Does nothing when highdicom already parsed the table (or another highdicom lays out its code
    differently); returns whether the lazy map is the one in use.
    """
    try:
        from highdicom import _standard_utils as su
    except ImportError:
        return False
    fn = getattr(su, "get_module_attribute_map", None)
    if fn is None or not hasattr(fn, "cache_info"):
        return False
    with _lock:
        if fn.cache_info().currsize == 0 and getattr(su, "json", None) is json:
            su.json = _Json(json)
            try:
                fn()
            finally:
                su.json = json
    return isinstance(fn(), LazyModuleMap)
