"""Load-test harness and benchmarks (gRPC + HTTP load against the service and the bare engines)."""
