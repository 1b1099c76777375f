"""Engines behind the core: small protocols and their real implementations (vLLM, ONNX Runtime, Triton)."""
