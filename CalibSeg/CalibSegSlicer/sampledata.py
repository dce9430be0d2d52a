"""The shipped sample case, registered with Slicer's SampleData module.

The 2 mm MNI ICBM152 2009a T1 template and its grey/white-matter segmentation ship with the
extension (``Resources/SampleData``), so "Download sample" works offline: SampleData copies
the files from their ``file://`` URIs into its cache, checks the SHA-256 checksums and loads
the volume and the segmentation.
"""

from __future__ import annotations

import logging
import os
import pathlib

from CalibSegSlicer import locations

CATEGORY = "CalibSeg"
SAMPLE_NAME = "CalibSeg-MNI-T1-2mm"
VOLUME_NODE_NAME = "MNI-T1-2mm"
LABELS_NODE_NAME = "MNI-T1-2mm-tissues"
#: SHA-256 of the shipped files (SampleData re-copies a cached file whose checksum differs).
VOLUME_SHA256 = "5b02b94e9e77f7529693eb852502b10860e7835b15b11bd8abab7ef8b82d6c2f"
LABELS_SHA256 = "8222fab57a52b464c4fee634adf9bf8163d955e9d4796f59c82638fb8a3382f7"


def fileUri(path: str) -> str:
    """``file://`` URI of a local file (what SampleData downloads from)."""
    return pathlib.Path(os.path.abspath(path)).as_uri()


def registrationArguments(base: str | None = None) -> dict:
    """Keyword arguments of ``SampleDataLogic.registerCustomSampleDataSource``."""
    volume = locations.sampleDataPath(base)
    labels = locations.sampleLabelsPath(base)
    return {
        "category": CATEGORY,
        "sampleName": SAMPLE_NAME,
        "thumbnailFileName": locations.sampleThumbnailPath(base),
        "uris": [fileUri(volume), fileUri(labels)],
        "fileNames": [os.path.basename(volume), os.path.basename(labels)],
        "nodeNames": [VOLUME_NODE_NAME, LABELS_NODE_NAME],
        "checksums": [f"SHA256:{VOLUME_SHA256}", f"SHA256:{LABELS_SHA256}"],
        "loadFileTypes": ["VolumeFile", "SegmentationFile"],
    }


def registerSampleData() -> bool:
    """Register the sample with the SampleData module (at Slicer's ``startupCompleted()``).

    Returns False, with a warning in the log, when the sample files are missing.
    """
    import SampleData

    try:
        arguments = registrationArguments()
    except FileNotFoundError as exc:
        logging.warning("CalibSeg sample data not registered: %s", exc)
        return False
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**arguments)
    return True
