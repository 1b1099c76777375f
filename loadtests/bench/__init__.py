"""``make bench`` / ``python -m loadtests.bench``: the side-by-side benchmarks of docs/BENCHMARKS.md.

- ``vqa``: the service's Ask over gRPC vs vLLM's offline ``LLM.generate``, vLLM vs a plain transformers
  ``generate`` loop, MedCLM precision variants, VQA latency against output length (on a ~80M-parameter LLaVA
  with random weights, built by ``bench_model``), and the trained default's accuracy per precision;
- ``segmenter``: ``Segment`` through the service vs bare ONNX Runtime and vs the local Triton, dynamic
  batching on vs off, precision variants, latency against image side, and achieved GFLOP/s against this
  CPU's peak (``flops``);
- ``docs``: the markdown page and its plots.

Engines run one at a time, each in its own process, so their memory is measured alone and freed after.
"""
