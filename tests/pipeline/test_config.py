"""Schema-guided number coercion for YAML 1.1 exponents."""

from pipeline.config import coerce_numbers

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
