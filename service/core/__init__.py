"""Transport-agnostic core: request/result dataclasses and the pipeline. Imports neither fastapi nor grpc."""
