"""``python -m service``: every setting is a flag (``--http-port 0``) or an environment variable
(``MEDCLM_HTTP_PORT=0``); flags win. Prints ``{"http_port": ..., "grpc_port": ...}`` once both servers listen."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import get_args, get_origin

from pydantic import ValidationError

from service.config import Settings


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`Settings` field, its description and default shown in ``--help``."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="MedCLM service: grounded medical VQA (vLLM) and organ segmentation (ONNX Runtime / Triton) "
                    "over gRPC and HTTP. Every flag can also be set as MEDCLM_<NAME> in the environment.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        kwargs = {"help": field.description, "default": argparse.SUPPRESS}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = name.upper()
            choices = get_args(annotation) if "Literal" in str(get_origin(annotation)) else None
            if choices:
                kwargs["choices"] = choices
        parser.add_argument(_flag(name), dest=name, **kwargs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags over the environment, configure logging, serve until SIGTERM."""
    args = vars(build_parser().parse_args(argv))
    try:
        settings = Settings(**args)
    except ValidationError as exc:
        # Without the input values: they may hold API keys.
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"invalid setting {where}: {error['msg']}", file=sys.stderr)
        return 2
    # stdout carries only the ports line; vLLM would print its own logs there. Its loggers propagate to
    # our JSON handler on stderr instead.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    from service.logging import configure_logging
    from service.runner import serve

    configure_logging(settings.log_level)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
