"""DICOM: image series in, DICOM SEG and Parametric Map out (pydicom, highdicom).

- :func:`read_series_datasets`: the instances of a DICOM series folder in the
  slice order :func:`CalibSegLib.io.read_image` uses, so array slice ``z`` is
  instance ``z``.
- :func:`write_series`: a ``(Z, Y, X)`` volume as a DICOM image series (one
  file per slice), e.g. the embedded sample case for testing a DICOM workflow.
- :func:`write_segmentation`: labels as a DICOM SEG (one segment per
  foreground class, model name and version as the algorithm).
- :func:`write_confidence_map`: confidence (or any map in [0, 1]) as a DICOM
  Parametric Map with a real-world value mapping.

Both outputs reference the source series (same frame of reference and study)
and are written atomically; the source files are only read.
"""

from __future__ import annotations

import datetime
import os
import re

import numpy as np

from CalibSegLib import __version__
from CalibSegLib.errors import CalibSegError
from CalibSegLib.io import LPS_TO_RAS, atomic_path, series_file_names

MANUFACTURER = "CalibSeg"


def read_series_datasets(folder: str, pixels: bool = True) -> list:
    """The series' datasets in the slice order of ``read_image``; headers only without pixels."""
    import pydicom

    return [pydicom.dcmread(name, stop_before_pixels=not pixels)
            for name in series_file_names(folder)]


def _geometry(affine: np.ndarray) -> tuple[list[float], list[float], float, np.ndarray, np.ndarray]:
    """(orientation, pixel spacing [row, column], slice spacing, origin, slice step) in LPS."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise CalibSegError("The affine has a zero-length voxel axis.")
    unit = axes / spacing
    orientation = [float(v) for v in np.concatenate([unit[:, 0], unit[:, 1]])]
    pixel_spacing = [float(spacing[1]), float(spacing[0])]
    return orientation, pixel_spacing, float(spacing[2]), lps[:3, 3], axes[:, 2]


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6g}"


def write_series(array: np.ndarray, affine: np.ndarray, folder: str, *, modality: str = "MR",
                 patient_name: str = "Sample^Case", patient_id: str = "CALIBSEG-SAMPLE",
                 series_description: str = "CalibSeg sample case",
                 body_part: str = "") -> list[str]:
    """Write ``array``, array of shape (Z, Y, X), as a single-frame DICOM series in ``folder``.

    ``affine`` is its voxel-to-RAS matrix, array of shape (4, 4).

    Intensities are stored as unsigned 16-bit integers with a rescale slope and
    intercept (quantisation error at most half the slope). ``modality`` is
    ``"MR"`` or ``"CT"``; ``body_part`` (e.g. ``HEAD``, ``CHEST``: unpaired parts, so
    no laterality) is the Body Part Examined. Returns the written paths
    (``slice_0001.dcm`` …).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_series needs a 3D (Z, Y, X) array, got shape {array.shape}")
    if modality not in ("MR", "CT"):
        raise ValueError(f"modality must be MR or CT, got {modality!r}")
    if not np.all(np.isfinite(array)):
        raise CalibSegError("The volume holds NaN or infinite values; DICOM cannot store them.")
    if os.path.isdir(folder) and any(n.lower().endswith(".dcm") for n in os.listdir(folder)):
        raise CalibSegError(f"{folder} already holds DICOM files; choose an empty folder so "
                            "that it holds one series.")
    os.makedirs(folder, exist_ok=True)
    orientation, pixel_spacing, thickness, origin, step = _geometry(affine)
    low, high = float(array.min()), float(array.max())
    slope = float(_ds((high - low) / 65535.0 if high > low else 1.0))
    intercept = float(_ds(low))
    stored = np.clip(np.rint((array.astype(np.float64) - intercept) / slope), 0, 65535)
    stored = stored.astype(np.uint16)
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = datetime.datetime.now()
    written = []
    for z in range(array.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, z + 1
        ds.SeriesDescription, ds.Manufacturer = series_description, MANUFACTURER
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"  # head first, supine
        if body_part:
            ds.BodyPartExamined = body_part
        else:  # body part unknown, so its laterality is too (Type 2C: present, empty)
            ds.Laterality = ""
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER" if modality == "MR" else "AXIAL"]
        _acquisition_attributes(ds, modality)
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.ImagePositionPatient = [_ds(v) for v in origin + z * step]
        ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(thickness)
        ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        if modality == "CT":
            ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[z]).tobytes()
        path = os.path.join(folder, f"slice_{z + 1:04d}.dcm")
        with atomic_path(path) as tmp:
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        written.append(path)
    return written


def _acquisition_attributes(ds, modality: str) -> None:
    """The MR / CT Image module's acquisition attributes of a derived (synthetic) series.

    The sample volumes are derived images without a real acquisition, so the
    attributes the standard requires but that have no true value are present and
    empty (Type 2); the Type 1 ones say what is known: a 3D volume of research
    contrast (``RM``) without sequence variants or options.
    """
    if modality == "MR":
        ds.ScanningSequence, ds.SequenceVariant = "RM", "NONE"
        ds.ScanOptions, ds.MRAcquisitionType = "", "3D"
        ds.RepetitionTime = ds.EchoTime = ds.EchoTrainLength = ""
    else:
        ds.KVP, ds.AcquisitionNumber = "", ""


def _check_grid(array: np.ndarray, sources: list, what: str) -> None:
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if array.shape != (len(sources), rows, columns):
        raise CalibSegError(
            f"The {what} has shape {array.shape} but the source series is "
            f"{len(sources)} slices of {rows}x{columns}; predict on the series itself."
        )


#: Coded concepts of class names the keyword rule below does not find (lower case):
#: name -> (category, type, type modifier or None), as names in pydicom's SNOMED CT codes.
_CONCEPTS = {
    "rib": ("AnatomicalStructure", "Rib", None),
    "ribs": ("AnatomicalStructure", "Rib", None),
    "cervical vertebral column": ("AnatomicalStructure", "CervicalSpine", None),
    "thoracic vertebral column": ("AnatomicalStructure", "ThoracicSpine", None),
    "lumbar vertebral column": ("AnatomicalStructure", "LumbarSpine", None),
    "right lung": ("AnatomicalStructure", "Lung", "Right"),
    "left lung": ("AnatomicalStructure", "Lung", "Left"),
    "tissue": ("Tissue", "Tissue", None),
}


def segment_concepts(name: str):
    """``(category, type, modifier or None)`` SNOMED CT codes of a class name.

    Known names (the chest CT's ribs, spine sections, right/left lung, tissue)
    come from a table; others by keyword from pydicom's SNOMED CT codes
    (``grey matter`` → Gray matter, ``spleen`` → Spleen) as anatomical
    structures; anything else is the generic Tissue.
    """
    from pydicom.sr.codedict import codes

    key = " ".join(name.lower().split())
    if key in _CONCEPTS:
        category, kind, modifier = _CONCEPTS[key]
        return (getattr(codes.SCT, category), getattr(codes.SCT, kind),
                None if modifier is None else getattr(codes.SCT, modifier))
    words = re.sub(r"[^a-z0-9 ]", " ", key.replace("grey", "gray")).split()
    keyword = "".join(w.capitalize() for w in words)
    try:
        return codes.SCT.AnatomicalStructure, getattr(codes.SCT, keyword), None
    except AttributeError:
        return codes.SCT.Tissue, codes.SCT.Tissue, None


def _algorithm(model_name: str, model_version: str, temperature: float):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name=model_name or "CalibSeg model", version=model_version or "unknown",
        family=codes.cid7162.ArtificialIntelligence,
        parameters={"temperature": f"{temperature:g}", "software": f"CalibSeg {__version__}"},
    )


def write_segmentation(labels: np.ndarray, sources: list, path: str, *, class_names,
                       class_colors, model_name: str = "", model_version: str = "",
                       temperature: float = 1.0) -> str:
    """Write ``labels`` as a binary DICOM SEG referencing ``sources``.

    ``labels`` is an integer array of shape (Z, Y, X), 0 = background, on the grid of
    the ``sources`` series.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    labels = np.asarray(labels)
    _check_grid(labels, sources, "segmentation")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise CalibSegError(f"Labels outside 0..{len(class_names) - 1} cannot be described.")
    algorithm = _algorithm(model_name, model_version, temperature)
    descriptions = []
    for index in range(1, len(class_names)):
        category, prop, modifier = segment_concepts(class_names[index])
        red, green, blue = (int(round(255 * float(v))) for v in class_colors[index][:3])
        description = hd.seg.SegmentDescription(
            segment_number=index, segment_label=class_names[index][:64],
            segmented_property_category=category,
            segmented_property_type=prop,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(red, green, blue),
        )
        if modifier is not None:  # e.g. Lung + Right: (0062,0011) in the type's item
            description.SegmentedPropertyTypeCodeSequence[0]\
                .SegmentedPropertyTypeModifierCodeSequence = [
                    hd.sr.CodedConcept.from_code(modifier)]
        descriptions.append(description)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=labels.astype(np.uint16, copy=False),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 100,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=(model_name or "CalibSeg")[:64],
        software_versions=__version__, device_serial_number=model_version or "0",
        content_label="CALIBSEG", content_description=f"{model_name} segmentation"[:64],
        series_description=f"CalibSeg {model_name}"[:64], omit_empty_frames=False,
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


def write_confidence_map(values: np.ndarray, sources: list, path: str, *,
                         label: str = "CONFIDENCE", explanation: str = "", model_name: str = "",
                         model_version: str = "") -> str:
    """Write a float map in [0, 1] as a DICOM Parametric Map referencing ``sources``.

    ``values`` is an array of shape (Z, Y, X) on the grid of the ``sources`` series.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    values = np.asarray(values, dtype=np.float32)
    _check_grid(values, sources, "map")
    if not np.all(np.isfinite(values)):
        raise CalibSegError("The map holds NaN or infinite values; DICOM cannot store them.")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label[:16], lut_explanation=(explanation or label)[:64], unit=codes.UCUM.NoUnits,
        value_range=(float(values.min()), float(values.max())), slope=1.0, intercept=0.0,
    )
    pmap = hd.pm.ParametricMap(
        source_images=sources, pixel_array=values, series_instance_uid=generate_uid(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 101,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=(model_name or "CalibSeg")[:64], software_versions=__version__,
        device_serial_number=model_version or "0", contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label=label[:16], content_description=(explanation or label)[:64],
        series_description=f"CalibSeg {model_name} {label.lower()}"[:64],
    )
    for keyword in ("BodyPartExamined", "Laterality"):  # General Series, as in the source
        if keyword in sources[0] and keyword not in pmap:
            setattr(pmap, keyword, getattr(sources[0], keyword))
    if "BodyPartExamined" not in pmap and "Laterality" not in pmap:
        pmap.Laterality = ""  # unknown body part: laterality unknown (Type 2C, empty)
    with atomic_path(path) as tmp:
        pmap.save_as(tmp)
    return path
