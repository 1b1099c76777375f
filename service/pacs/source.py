"""What a DICOM output needs from the image it was derived from, checked before anything is built."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from service.errors import invalid

# Attributes every derived object copies or references (patient/study modules, the referenced instance).
REQUIRED_SOURCE_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                              "Rows", "Columns")
MANUFACTURER = "MedCLM"


@dataclass(frozen=True)
class ModelIdentity:
    """The model that produced a result, as it is written into the DICOM equipment and algorithm data."""

    name: str  # repository model name, e.g. "medclm" or "organ_seg_ct"
    fingerprint: str  # sha256 prefix of the served weights

    @property
    def software_versions(self) -> list[str]:
        """The service version and the weights' fingerprint (two values of SoftwareVersions)."""
        return [f"medclm-service {service_version()}", f"weights {self.fingerprint or 'unknown'}"]


def service_version() -> str:
    """The installed service package's version ("unknown" when run from an uninstalled tree)."""
    try:
        return metadata.version("medclm-service")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_source(dataset, field: str = "image") -> None:
    """INVALID_ARGUMENT naming every required attribute the source DICOM lacks (or holds empty)."""
    if dataset is None:
        raise invalid("DICOM outputs need a DICOM input (application/dicom or a DICOMweb reference)", field)
    missing = [k for k in REQUIRED_SOURCE_ATTRIBUTES if not str(dataset.get(k, "") or "").strip()]
    if missing:
        raise invalid(f"the source DICOM lacks {', '.join(missing)}, which a DICOM SEG/SR must reference", field)
