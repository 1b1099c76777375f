"""MedCLM inference service: grounded medical VQA and organ segmentation over gRPC and HTTP."""
