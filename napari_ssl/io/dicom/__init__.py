"""DICOM: image series in, de-identified copies and RTSTRUCT structure sets.

* :mod:`.series` -- DICOM series -> Volume (``load_dicom_volumes``; ``plan_dicom_series`` stops before the pixels);
* :mod:`.discovery` finds files and reads headers only (pixel data left on disk);
* :mod:`.frames` turns each file into 2-D frame records (Enhanced objects: one per frame);
* :mod:`.geometry` splits a series into regular stacks and orders them along the normal;
* :mod:`.pixels` decodes the pixels into one preallocated array and applies the rescale;
* :mod:`.pydicom_fast` -- every reach into pydicom's internals (raw header values, shallow header copies,
  the fast file writer), and how to re-check it;
* :mod:`.rtstruct` -- an RTSTRUCT as a label map on its referenced series (polygons filled by :mod:`.polygon_fill`);
* :mod:`.deid` -- de-identified copies of series with their SEG / RTSTRUCT.
"""
