"""Latency and throughput of ONNX Runtime sessions, measured side by side.

Variants are measured in interleaved rounds (fp32, fp16, int8, fp32, …) so that CPU frequency changes or a
neighbour's burst of work hit every variant alike; each figure is the median over rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Latency at batch 1 (ms) and throughput at batch 8 (images/s)."""

    p50_ms: float
    p99_ms: float
    images_per_second: float


def measure_sessions(sessions: dict[str, object], image: np.ndarray, rounds: int = 5,
                     latency_runs: int = 20, throughput_runs: int = 4, batch: int = 8) -> dict[str, Timing]:
    """Interleaved measurement of every session on the same input ([1,1,H,W] float32 ``image``)."""
    single = image[:1].astype(np.float32)
    batched = np.repeat(single, batch, axis=0)
    latencies: dict[str, list[float]] = {name: [] for name in sessions}
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():  # warm-up: first runs allocate arenas and pick kernels
        for _ in range(2):
            session.run(None, {"image": batched})
            session.run(None, {"image": single})
    for _ in range(rounds):
        for name, session in sessions.items():
            for _ in range(latency_runs):
                start = time.perf_counter()
                session.run(None, {"image": single})
                latencies[name].append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            for _ in range(throughput_runs):
                session.run(None, {"image": batched})
            rates[name].append(batch * throughput_runs / (time.perf_counter() - start))
    return {name: Timing(float(np.percentile(latencies[name], 50)), float(np.percentile(latencies[name], 99)),
                         float(np.median(rates[name]))) for name in sessions}
