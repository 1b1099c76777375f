"""MedCLM data engine: lesion detection datasets → grounded VQA records with chain-of-thought."""
