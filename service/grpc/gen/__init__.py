"""Generated gRPC code for ``proto/medclm/v1/medclm.proto`` (``python -m service.grpc.codegen``).

protoc emits absolute imports named after the proto path (``from medclm.v1 import medclm_pb2``), so this
folder goes on ``sys.path`` and the generated modules are imported once, under those names. Import them
from here: ``from service.grpc.gen import medclm_pb2, medclm_pb2_grpc``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_GEN_DIR = str(Path(__file__).resolve().parent)
if _GEN_DIR not in sys.path:
    # First on the path so no other top-level "medclm" can shadow the generated package.
    sys.path.insert(0, _GEN_DIR)

from medclm.v1 import medclm_pb2, medclm_pb2_grpc  # noqa: E402  (needs the path above)

MEDCLM_SERVICE = medclm_pb2.DESCRIPTOR.services_by_name["MedCLM"].full_name

__all__ = ["MEDCLM_SERVICE", "medclm_pb2", "medclm_pb2_grpc"]
