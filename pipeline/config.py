"""Config loading help for the Snakefile: YAML 1.1 reads `1e-3` as a string; the schema says it is a number."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _wants_number(schema: dict) -> bool:
    """Whether a schema node accepts a number (and so a numeric-looking string should become one)."""
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    return "number" in kinds and "string" not in kinds


def coerce_numbers(config: Any, schema: dict) -> Any:
    """Turn strings such as '1e-3' into floats wherever `schema` expects a number; returns the new value."""
    if isinstance(config, str) and _wants_number(schema) and _FLOAT.match(config.strip()):
        return float(config)
    if isinstance(config, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in config.items():
            sub = props.get(key, extra if isinstance(extra, dict) else {})
            config[key] = coerce_numbers(value, sub)
    elif isinstance(config, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(config):
            config[i] = coerce_numbers(value, schema["items"])
    return config


def load_schema(path: str | Path) -> dict:
    """The config schema as a dict."""
    with open(path) as f:
        return yaml.safe_load(f)
