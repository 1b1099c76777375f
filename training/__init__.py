"""Offline side of MedCLM: the data engine, the organ segmenter and the vision-language model."""
