"""Screening a whole archive: ``osteo-edge screen``.

A folder tree, a CSV list of files or a PACS query (C-FIND, then C-GET into a bounded spool) is
answered image by image with the torch-free runtime, in N local worker processes or on a Ray cluster,
and every answer goes into the clinic record (one row per image per model seal: a rerun, or a run
after a SIGKILL, skips what is answered). At the end: counts by status, the referral worklist (CSV)
and the throughput. A screening aid, never a diagnosis: a referral says "refer for DEXA".

Torch-free: imports the runtime, the DICOM record and, for the PACS, pynetdicom; Ray only when
``engine="ray"``.
"""

from .run import ScreenResult, screen
from .sources import ScreenItem, csv_items, folder_items

__all__ = ["ScreenItem", "ScreenResult", "csv_items", "folder_items", "screen"]
