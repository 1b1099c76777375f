"""Organ segmenter: a small 2-D UNet per modality, trained on phantoms, exported to ONNX (fp32/fp16/int8)
and served from model_repository/ by ONNX Runtime in-process or by Triton."""
