"""``--key=value`` overrides for the training config dataclasses (segmenter and MedCLM share one parser).

Unknown keys and values of the wrong type raise, so a typo never trains with a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

C = TypeVar("C")


def apply_overrides(config: C, overrides: list[str], error: type[Exception] = ValueError) -> C:
    """Return a copy of ``config`` with ``--key=value`` strings applied (values parsed as JSON when possible);
    problems raise ``error``."""
    fields = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise error(f"override {item!r} is not of the form --key=value")
        key, raw = text.split("=", 1)
        key = key.replace("-", "_")
        if key not in fields:
            raise error(f"unknown config key {key!r}; known keys: {', '.join(sorted(fields))}")
        changes[key] = parse_value(raw, getattr(config, key), key, error)
    return dataclasses.replace(config, **changes)


def parse_value(raw: str, current: Any, key: str, error: type[Exception] = ValueError) -> Any:
    """Parse ``raw`` into the type of the field's current value (str, bool, int, float or tuple)."""
    if isinstance(current, str):
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        if isinstance(current, bool) and raw.lower() in ("true", "false", "yes", "no", "on", "off"):
            return raw.lower() in ("true", "yes", "on")
        if isinstance(current, tuple):  # widths=16,32,64 or betas=0.9,0.98
            try:
                return tuple(json.loads(p) for p in raw.split(","))
            except json.JSONDecodeError:
                pass
        raise error(f"cannot parse value {raw!r} for {key}") from None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise error(f"{key} expects true or false, got {raw!r}")
        return value
    if isinstance(current, int) and not isinstance(value, int):
        raise error(f"{key} expects an integer, got {raw!r}")
    if isinstance(current, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise error(f"{key} expects a number, got {raw!r}")
        return float(value)
    if isinstance(current, tuple):
        return tuple(value if isinstance(value, list) else [value])
    return value
