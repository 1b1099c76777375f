"""PACS-native results (DICOM SEG, DICOM SR TID 1500) and DICOMweb access."""
