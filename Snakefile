# Rebuilds the paper's tables and figures: snakemake --cores all [--config profile=NAME]
# Profiles live in config/{smoke,quick,paper}.yaml, checked against
# schemas/config.schema.yaml (an unknown key or a wrong type stops the workflow before any
# job); each rule runs one numbered notebook with papermill and keeps the executed copy
# under results/<profile>/notebooks/. The rules live in rules/*.smk:
#   common.smk   settings, run folders and grids (no rules)
#   data.smk     the data step: before the first job, the profile's data sets are checked
#                under data_root and CIFAR-10/100 downloaded there when missing (onstart)
#   train.smk    pretrain, retrain, finetune_rate, unlearn
#   studies.smk  feature_maps and the seven study notebooks (written once, in a loop)
#   report.smk   report (Table 2, Figure 3, job times, comparison with the reference)
# Every rule declares threads and resources (gpu, mem_mb, runtime in minutes) from the
# profile's resources:, so it also runs on a cluster, e.g. on Slurm:
#   snakemake --profile profiles/slurm --config profile=paper
# Parsing this file imports no torch (dry runs and cluster submissions stay light).
#
# Tables and figures go to results/<profile>/figures/; the committed reference results of
# a profile live in figures/<profile>/, and the report compares the two (comparison.md).
# Every job's time is recorded (benchmark:) under results/<profile>/benchmarks/<rule>/ and
# summed in table_jobs (all but the report's own, which writes that table).
#
# Result identity: a run's folder names a short hash of every setting that changes its
# result, so editing a profile rebuilds exactly what depends on the edit and keeps the old
# results beside the new ones:
#   results/<profile>/<setting>/<dataset>/<model>/q<q>/seed<seed>/p<P>/pretrain.pt
#   .../p<P>/forget<f>/retrain.pt  (one retraining per forget set and pretraining seed)
#   .../p<P>/forget<f>/finetune_rate.json  (fine-tuning's rate, when chosen among candidates)
#   .../p<P>/forget<f>/<arm>-s<unlearning seed>-u<U>/metrics.json
# P hashes the settings pretraining reads, U all settings of the run (see experiment());
# the data root, the device and thread counts are not hashed. Settings: "main" (the
# headline: Table 2 and the deciding comparison), "small" (the secondary tables at the
# profile's secondary: scale, when it has one) and "bias" (Table 1's own overrides).
import hashlib
import json
import sys
from pathlib import Path

# jsonschema checks the "iri" formats with rfc3987-syntax where it is installed (JupyterLab
# brings it), which compiles a grammar on import: 1.8 s of every Snakemake process, each
# job's included. The profile schema uses no such format; leave it unloaded.
sys.modules.setdefault("rfc3987_syntax", None)
import jsonschema
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from fedunlearn_lib.arms import ARMS  # torch-free (the package imports lazily)

PROFILE = config.get("profile", "quick")


configfile: f"config/{PROFILE}.yaml"


include: "rules/common.smk"


localrules:
    all,


rule all:
    input:
        expand(FIG + "/{name}.{ext}", ext=["png", "pdf"], name=FIGURES),
        expand(FIG + "/{name}.{ext}", ext=["csv", "md"], name=TABLES + REPORT_TABLES),
        expand(FIG + "/fig_training_curves.{ext}", ext=["png", "pdf"]),
        FIG + "/comparison.md",


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/studies.smk"
include: "rules/report.smk"
