# mowis: motion-aided weakly supervised instance segmentation (two-stream BoxInst on YouTube-VIS 2019).
# This file only loads and validates the configuration and includes the rules; see workflow/rules/.
import os

from snakemake.utils import min_version, validate

from pipeline.config import coerce_numbers, load_schema

min_version("9.19")


configfile: os.path.join(workflow.basedir, "config.yaml")


SCHEMA = os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
coerce_numbers(config, load_schema(SCHEMA))
validate(config, SCHEMA)


include: "workflow/rules/common.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/flow.smk"
include: "workflow/rules/affinity.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets(),
