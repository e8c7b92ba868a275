"""The workflow's configuration, as the Snakefile builds it before any job is planned: config.yaml, then each
`--configfile`, then each `--config key=JSON`, merged key by key; numbers typed by the schema; checked against
workflow/schemas/config.schema.yaml and the rules the schema cannot say (finite numbers, the lr schedule,
each experiment's model); cut down to the experiments that `run` names. Errors name the config field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from snakemake.common.configfile import load_configfile
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

CONFIG_HELP = ("write each --config value as JSON, quoted for the shell, e.g. "
               """--config train='{"iters": 10, "steps": [8]}' model='{"two_stream": false}' """
               """dataset='{"root": null}' run='["boxinst"]'""")


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


def config_overrides(entries: Sequence[str]) -> dict:
    """`--config key=value` entries with each value read as JSON (Snakemake itself reads them as YAML with
    every scalar a string: `{"iters": 10}` would give iters "10", `false` the string "false")."""
    overrides: dict = {}
    for entry in entries:
        key, sep, text = entry.partition("=")
        if not sep:
            raise WorkflowError(f"--config {entry}: expected key=value; {CONFIG_HELP}")
        try:
            value = json.loads(text)
        except ValueError as e:
            raise WorkflowError(f"--config {entry}: {key} is not JSON ({e}); {CONFIG_HELP}") from None
        update_config(overrides, {key: value})
    return overrides


def merged_config(configfiles: Sequence[str | Path], entries: Sequence[str]) -> dict:
    """The config files in order, then the `--config` entries as JSON, merged key by key (Snakemake's order)."""
    config: dict = {}
    for path in configfiles:
        update_config(config, load_configfile(path))
    update_config(config, config_overrides(entries))
    return config


def _field(path: Sequence[Any]) -> str:
    """A config field's dotted name, e.g. train.steps.1 (`config` for the top level)."""
    return ".".join(map(str, path)) or "config"


def non_finite(value: Any, path: tuple = ()) -> list[str]:
    """Errors for every NaN or infinite number in `value`, each naming its field."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{_field(path)}: {value} is not a finite number"]
    if isinstance(value, dict):
        return [e for key, sub in value.items() for e in non_finite(sub, (*path, key))]
    if isinstance(value, list):
        return [e for i, sub in enumerate(value) for e in non_finite(sub, (*path, i))]
    return []


def schema_errors(value: Any, schema: dict, path: tuple = (), keys: Sequence[str] | None = None) -> list[str]:
    """Every way `value` breaks `schema`, each as `<field>: <what is wrong>` (fields under `path`); with
    `keys`, only the errors inside those keys of `value`."""
    found = jsonschema.Draft202012Validator(schema).iter_errors(value)
    return [f"{_field((*path, *e.absolute_path))}: {e.message}"
            for e in sorted(found, key=lambda e: list(map(str, e.absolute_path)))
            if keys is None or (e.absolute_path and e.absolute_path[0] in keys)]


def schedule_errors(train: dict) -> list[str]:
    """train.steps must increase strictly and lie below train.iters: a step at or after the last iteration
    never lowers the learning rate, which is a forgotten edit (shorter iters), not a schedule."""
    steps, iters = train["steps"], train["iters"]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        return [f"train.steps: must increase strictly, got {steps}"]
    if steps and steps[-1] >= iters:
        return [f"train.steps: {steps} reach train.iters ({iters}); lr steps must be below iters "
                "(give both, e.g. --config train='{\"iters\": 10, \"steps\": [8]}', or steps [] for none)"]
    return []


def experiment_model(config: dict, name: str) -> dict:
    """The model section with experiment `name`'s overrides."""
    return {**config["model"], **config["experiments"][name]["model"]}


def experiment_errors(config: dict, schema: dict) -> list[str]:
    """Each experiment's model (the model section after its overrides) checked against the model schema;
    errors name `experiments.<name>.model.<key>`."""
    errors = []
    for name, exp in config["experiments"].items():
        where = ("experiments", name, "model")
        unknown = sorted(set(exp["model"]) - set(config["model"]))
        if unknown:
            errors.append(f"{_field(where)}: unknown keys {unknown}; "
                          f"expected keys of the model section {sorted(config['model'])}")
            continue
        # errors in keys it does not override are the model section's own, reported as model.<key>
        errors += schema_errors(experiment_model(config, name), schema["properties"]["model"], where,
                                keys=list(exp["model"]))
    return errors


def run_errors(config: dict) -> list[str]:
    """`run` may name only defined experiments."""
    unknown = [name for name in config["run"] or [] if name not in config["experiments"]]
    return [f"run: unknown experiments {unknown}; defined: {list(config['experiments'])}"] if unknown else []


def _refuse(errors: list[str]) -> None:
    """Raise one WorkflowError listing `errors`, if any."""
    if errors:
        raise WorkflowError("Invalid configuration (config.yaml, then --configfile files, then --config):\n  "
                            + "\n  ".join(errors))


def checked_config(configfiles: Sequence[str | Path], entries: Sequence[str], schema: dict) -> dict:
    """The workflow's config from its files and `--config` entries, checked, with only the experiments that
    `run` names (all when null) left in `experiments`; a WorkflowError lists the problems of the first
    stage that finds any."""
    config = coerce_numbers(merged_config(configfiles, entries), schema)
    _refuse(non_finite(config))  # first: NaN passes the schema's bounds, with confusing messages
    _refuse(schema_errors(config, schema))  # then the checks below may rely on the structure
    _refuse([*schedule_errors(config["train"]), *experiment_errors(config, schema), *run_errors(config)])
    chosen = config["run"] or list(config["experiments"])
    config["experiments"] = {name: config["experiments"][name] for name in chosen}
    return config
