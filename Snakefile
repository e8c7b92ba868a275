# mowis: motion-aided weakly supervised instance segmentation (two-stream BoxInst on YouTube-VIS 2019).
# This file only loads and validates the configuration and includes the rules; see workflow/rules/.
import os

from snakemake.utils import min_version

from pipeline.config import checked_config, load_schema

min_version("9.19")

DEFAULTS = os.path.join(workflow.basedir, "config.yaml")


configfile: DEFAULTS


# Rebuilt from the same sources with `--config` values read as JSON (Snakemake reads them as all-string YAML),
# checked (pipeline/config.py) and cut down to the experiments that `run` names, before any job is planned.
SCHEMA = os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
FILES = [DEFAULTS, *workflow.config_settings.configfiles]
ENTRIES = workflow.config_settings.config_args or []
checked = checked_config(FILES, ENTRIES, load_schema(SCHEMA))
config.clear()
config.update(checked)


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
