"""A highdicom Segmentation whose read-side lookup tables are built on first use, not at construction.

highdicom's constructor ends by indexing every frame (``_build_luts``: an in-memory SQLite table of
segments, source instances and dimension indices) so that the new object can be read from like a
file it opened. Writing the SEG to a file or a DICOMweb server never uses that index; building it
twice (once for highdicom's own build, once again after napari_ssl fills in the frames) cost about
0.1 s of each export of a 300-slice series. Here it is built the first time a private attribute the
object lacks is looked up (what every read method does on its way to the index), so a returned
object still reads back exactly like highdicom's own.
"""
from __future__ import annotations

import highdicom as hd

_PENDING = "_napari_ssl_luts_pending"


class DeferredLutSegmentation(hd.seg.Segmentation):
    """:class:`highdicom.seg.Segmentation` with its frame index built on first read."""

    def _build_luts(self) -> None:
        self.__dict__[_PENDING] = True

    def build_luts_now(self) -> None:
        """Build the frame index now (again, from the current frames)."""
        self.__dict__[_PENDING] = False
        hd.seg.Segmentation._build_luts(self)

    def invalidate_luts(self) -> None:
        """The frames changed: build the index again on the next read."""
        self.__dict__[_PENDING] = True

    @property
    def luts_pending(self) -> bool:
        return bool(self.__dict__.get(_PENDING))

    def __getstate__(self):
        # highdicom pickles (and deep-copies) its frame index with the object: build it first
        if self.__dict__.get(_PENDING):
            self.build_luts_now()
        return super().__getstate__()

    def __getattr__(self, name: str):
        if name[:1] == "_" and name[:2] != "__" and self.__dict__.get(_PENDING):
            self.build_luts_now()
            return getattr(self, name)
        return super().__getattr__(name)
