"""Dataset adapters: each turns one detection dataset format into ``DetectionCase`` records."""
