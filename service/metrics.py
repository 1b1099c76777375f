"""Prometheus metrics of both transports, in one registry the service owns (tests build several services
in one process, so the global default registry is not used).

Labels never carry patient data: route names, transports, status codes and model names only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)


class ServiceMetrics:
    """The service's metrics; ``registry`` is what ``/metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("medclm_requests", "Requests by transport, route and status code",
                                ["transport", "route", "code"], registry=r)
        self.latency = Histogram("medclm_request_latency_seconds", "End-to-end request latency",
                                 ["transport", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("medclm_queue_seconds", "Time from arrival to engine start", ["model"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.engine = Histogram("medclm_engine_seconds", "Time inside the engine", ["model"],
                                buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("medclm_time_to_first_token_seconds", "Time to first generated token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("medclm_tokens", "Tokens processed", ["model", "kind"], registry=r)  # prompt|completion
        self.in_flight = Gauge("medclm_in_flight_requests", "Requests being served", ["transport"], registry=r)
        self.engine_ready = Gauge("medclm_engine_ready", "1 when the engine can serve", ["model"], registry=r)
        self.batch_size = Histogram("medclm_segmentation_batch_size", "Segmentation batch sizes", ["model"],
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        # Reliability: what the engines and admission gates hold right now, and what was stopped or restarted.
        self.engine_running = Gauge("medclm_engine_running_requests",
                                    "Requests inside the engine (vLLM: waiting or generating)", ["model"], registry=r)
        self.engine_aborts = Counter("medclm_engine_aborts",
                                     "Generations stopped before they finished (client gone, deadline, shutdown)",
                                     ["model"], registry=r)
        self.engine_restarts = Counter("medclm_engine_restarts",
                                       "Engines (re)loaded by the supervisor after a failure", ["model"], registry=r)
        self.admission = Gauge("medclm_admission_requests", "Admitted requests per admission gate and state",
                               ["gate", "state"], registry=r)  # state: running | waiting
