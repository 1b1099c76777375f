"""The gRPC front door: ``create_server`` (server.py), the servicer, interceptors and the converters.

The API is defined in ``proto/medclm/v1/medclm.proto``; its generated code lives in ``service/grpc/gen``.
"""
