"""The workflow's configuration: number coercion for YAML 1.1 exponents, `--config` as JSON, merging, the
start-up checks (schema, finite numbers, lr steps, experiments' models, `run`) and the params dataclasses'
own type checks."""

import json
import math
import shlex
from pathlib import Path

import pytest
import yaml
from snakemake.cli import parse_config
from snakemake.exceptions import WorkflowError

from model.network import ModelParams
from model.train import TrainParams
from pipeline.config import (checked_config, coerce_numbers, config_overrides, load_schema, merged_config,
                             non_finite, schedule_errors)
from pipeline.field_types import check_field_types

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = REPO / "config.yaml"
CONFIG_SCHEMA = load_schema(REPO / "workflow/schemas/config.schema.yaml")

SCHEMA = {"type": "object", "properties": {
    "lr": {"type": "number"}, "name": {"type": "string"}, "root": {"type": ["string", "null"]},
    "sizes": {"type": "array", "items": {"type": "number"}},
    "exps": {"type": "object", "additionalProperties": {"type": "object", "properties": {"w": {"type": "number"}}}}}}


def test_exponents_become_floats_only_where_numbers_are_wanted() -> None:
    cfg = {"lr": "1e-3", "name": "1e-3", "root": "2e5", "sizes": ["1E2", 3], "exps": {"a": {"w": "-2.5e+1"}}}
    out = coerce_numbers(cfg, SCHEMA)
    assert out == {"lr": 0.001, "name": "1e-3", "root": "2e5", "sizes": [100.0, 3], "exps": {"a": {"w": -25.0}}}


def test_non_numeric_strings_stay_for_the_schema_to_reject() -> None:
    assert coerce_numbers({"lr": "fast"}, SCHEMA) == {"lr": "fast"}


def test_config_entries_keep_their_json_types_where_snakemake_gives_strings() -> None:
    """Snakemake's own reading (YAML, every scalar a string) beside ours (JSON) for the same entries."""
    entries = ['train={"iters": 10, "lr": 1e-3}', 'model={"two_stream": false}', 'dataset={"root": null}',
               'run=["boxinst"]']
    assert parse_config(entries) == {"train": {"iters": "10", "lr": "1e-3"}, "model": {"two_stream": "false"},
                                     "dataset": {"root": "null"}, "run": ["boxinst"]}
    assert config_overrides(entries) == {"train": {"iters": 10, "lr": 0.001}, "model": {"two_stream": False},
                                         "dataset": {"root": None}, "run": ["boxinst"]}


@pytest.mark.parametrize("entry", ["train={iters: 10}", "run=boxinst", "model"])
def test_config_entries_that_are_not_json_are_refused_with_how_to_write_them(entry: str) -> None:
    with pytest.raises(WorkflowError, match=r"--config .*model='\{\"two_stream\": false\}'"):
        config_overrides([entry])


def test_files_then_config_entries_merge_key_by_key(tmp_path: Path) -> None:
    """Later sources win per key; sections and experiments are merged, not replaced (Snakemake's order)."""
    first, second = tmp_path / "a.yaml", tmp_path / "b.json"
    first.write_text("train: {iters: 5, lr: 0.5}\nexperiments: {a: {paper: null, model: {head_convs: 1}}}\n")
    second.write_text(json.dumps({"train": {"iters": 7}, "experiments": {"b": {"paper": None, "model": {}}}}))
    merged = merged_config([first, second], ['train={"lr": 0.25}', 'experiments={"a": {"model": {}}}'])
    assert merged == {"train": {"iters": 7, "lr": 0.25},
                      "experiments": {"a": {"paper": None, "model": {"head_convs": 1}}, "b": {"paper": None, "model": {}}}}


def test_non_finite_numbers_are_named_wherever_they_are() -> None:
    config = {"train": {"lr": math.nan, "steps": [1, math.inf]}, "affinity": {"tau_flow": 0.5}, "x": [-math.inf]}
    assert non_finite(config) == ["train.lr: nan is not a finite number", "train.steps.1: inf is not a finite number",
                                  "x.0: -inf is not a finite number"]


@pytest.mark.parametrize(("steps", "iters", "wrong"), [
    ([3], 4, False), ([], 4, False), ([2, 3], 4, False),
    ([3, 3], 10, True), ([5, 3], 10, True),  # not strictly increasing
    ([4], 4, True), ([1100, 1350], 10, True),  # at or beyond iters: would never apply
])
def test_lr_steps_increase_strictly_and_lie_below_iters(steps: list[int], iters: int, wrong: bool) -> None:
    errors = schedule_errors({"steps": steps, "iters": iters})
    assert bool(errors) == wrong and all(e.startswith("train.steps: ") for e in errors)


def checked_with(tmp_path: Path, override: str, *entries: str) -> dict:
    """checked_config on config.yaml, the YAML text `override` as a user's file, then `entries`."""
    path = tmp_path / "user.yaml"
    path.write_text(override)
    return checked_config([DEFAULTS, path], entries, CONFIG_SCHEMA)


def test_default_config_is_valid_and_runs_every_experiment(tmp_path: Path) -> None:
    config = checked_with(tmp_path, "{}")
    assert list(config["experiments"]) == list(yaml.safe_load(DEFAULTS.read_text())["experiments"])


def test_run_chooses_and_orders_the_experiments(tmp_path: Path) -> None:
    config = checked_with(tmp_path, "experiments: {solo: {paper: null, model: {}}}\n", 'run=["solo", "boxinst"]')
    assert list(config["experiments"]) == ["solo", "boxinst"]
    with pytest.raises(WorkflowError, match=r"run: unknown experiments \['nope'\]"):
        checked_with(tmp_path, "run: [nope]\n")


@pytest.mark.parametrize(("entry", "message"), [
    ('model={"two_stream": "false"}', "model.two_stream: 'false' is not of type 'boolean'"),
    ('model={"fpn_channels": true}', "model.fpn_channels: True is not of type 'integer'"),
    ('experiments={"ours": {"model": {"two_stream": "false"}}}',
     "experiments.ours.model.two_stream: 'false' is not of type 'boolean'"),
    ('experiments={"ours": {"model": {"fpn_channels": 2.5}}}',
     "experiments.ours.model.fpn_channels: 2.5 is not of type 'integer'"),
    ('experiments={"ours": {"model": {"head_convs": 0}}}',
     "experiments.ours.model.head_convs: 0 is less than the minimum of 1"),
    ('experiments={"ours": {"model": {"det_fusion": "mean"}}}', "experiments.ours.model.det_fusion: 'mean' is not one of"),
    ('experiments={"ours": {"model": {"backbon": "resnet50"}}}', "experiments.ours.model: unknown keys ['backbon']"),
    ('train={"lr": NaN}', "train.lr: nan is not a finite number"),
    ('train={"iters": 10, "steps": [4, 20]}', "train.steps: [4, 20] reach train.iters (10)"),
    ('dataset={"root": false}', "dataset.root: False is not of type 'string', 'null'"),
])
def test_bad_values_are_refused_naming_the_field(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(WorkflowError) as error:
        checked_with(tmp_path, "{}", entry)
    assert message in str(error.value)


def test_an_error_in_the_model_section_is_not_blamed_on_the_experiments(tmp_path: Path) -> None:
    """A bad model value that an experiment overrides is fine there; the section's own error names model.*."""
    with pytest.raises(WorkflowError) as error:
        checked_with(tmp_path, "model: {head_convs: 0}\n")
    assert "model.head_convs: 0 is less than the minimum of 1" in str(error.value)
    assert "experiments." not in str(error.value)


MODEL = json.loads((REPO / "tests/model/tiny_model.json").read_text())
TRAIN = json.loads((REPO / "tests/model/tiny_train.json").read_text())


@pytest.mark.parametrize(("cls", "base", "key", "value", "expected"), [
    (ModelParams, MODEL, "two_stream", "false", "true or false"),
    (ModelParams, MODEL, "fpn_channels", True, "an integer"),
    (ModelParams, MODEL, "mask_channels", 8.0, "an integer"),
    (ModelParams, MODEL, "weights", 0, "a string or null"),
    (ModelParams, MODEL, "mask_in_features", "p3", "a list, each a string"),
    (ModelParams, MODEL, "backbone", "resnet9", "one of 'resnet18', 'resnet34', 'resnet50', 'resnet101'"),
    (TrainParams, TRAIN, "lr", math.nan, "a finite number"),
    (TrainParams, TRAIN, "iters", True, "an integer"),
    (TrainParams, TRAIN, "grad_clip", "1", "a finite number or null"),
    (TrainParams, TRAIN, "min_sizes", [64.0], "a list, each an integer"),
    (TrainParams, TRAIN, "amp", "off", "one of 'fp32', 'bf16', 'fp16'"),
])
def test_params_dataclasses_reject_wrong_types(cls: type, base: dict, key: str, value: object,
                                               expected: str) -> None:
    section = "model" if cls is ModelParams else "train"
    with pytest.raises(ValueError, match=f"^{section}.{key}: expected {expected}, got "):
        cls(**{**base, key: value})


def test_params_dataclasses_take_what_json_gives() -> None:
    """An int for a float and null for an optional value are fine; lists become tuples."""
    params = TrainParams(**{**TRAIN, "lr": 1, "grad_clip": None})
    assert params.lr == 1 and params.steps == (4,)
    assert ModelParams(**MODEL).mask_in_features == ("p3", "p4", "p5")
    check_field_types(params, "train")  # still valid after the tuples replaced the lists


def test_the_readme_command_line_examples_are_valid(tmp_path: Path) -> None:
    """Each `--config` example of the README's Configuration section passes the start-up checks as written."""
    section = (REPO / "README.md").read_text().split("## Configuration")[1].split("\n## ")[0]
    commands = [line for line in section.split("```bash\n")[1].split("```")[0].splitlines() if "--config" in line]
    assert len(commands) == 2
    for line in commands:
        words = shlex.split(line, comments=True)
        entries = words[words.index("--config") + 1:]
        config = checked_config([DEFAULTS], entries, CONFIG_SCHEMA)
        assert all(config[key] == {**config[key], **json.loads(value)} for key, value in
                   (entry.split("=", 1) for entry in entries))
