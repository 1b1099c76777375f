"""MedCLM training: tokenizer, LLaVA model config, curriculum trainer, ZNorm and in-process evaluation."""
