"""The workflow profiles' schema (schemas/config.schema.yaml): the shipped profiles match
it, every section forbids keys it does not list, its experiment sections list the
library's dataclass fields, and a misspelt key stops the workflow with its name."""
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest
import yaml
from snakemake.utils import validate

from fedunlearn_lib.arms import ARMS
from fedunlearn_lib.data import DATASETS
from fedunlearn_lib.experiment import ExperimentConfig
from fedunlearn_lib.federated import FedConfig
from fedunlearn_lib.models import MODELS
from fedunlearn_lib.plan import notebook_defaults
from fedunlearn_lib.unlearn import UnlearnConfig

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def _profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_shipped_profiles_match_the_schema(name):
    validate(_profile(name), str(SCHEMA), set_default=False)


def test_experiment_sections_list_the_dataclass_fields(schema):
    defs = schema["$defs"]
    names = lambda cls: {f.name for f in fields(cls)}  # noqa: E731
    assert set(defs["experiment"]["properties"]) == names(ExperimentConfig)
    assert set(defs["federation"]["properties"]) == names(FedConfig)
    assert set(defs["unlearning"]["properties"]) == names(UnlearnConfig)
    ref = lambda name: {"$ref": f"#/$defs/{name}"}  # noqa: E731
    experiment = defs["experiment"]["properties"]
    assert experiment["federation"] == ref("federation")
    assert experiment["unlearning"] == ref("unlearning")
    top = schema["properties"]
    for section in (top["experiment"], top["secondary"],
                    top["per_model"]["additionalProperties"]["properties"]["experiment"]):
        assert section["$ref"] == "#/$defs/experiment"
    assert top["bias"]["properties"]["federation"] == ref("federation")
    assert top["bias"]["properties"]["unlearning"] == ref("unlearning")


def test_names_are_the_library_names(schema):
    defs = schema["$defs"]
    assert defs["arm"]["enum"] == list(ARMS)
    assert defs["model"]["enum"] == list(MODELS)
    assert defs["dataset"]["enum"] == list(DATASETS)


def test_study_sections_list_their_notebook_parameters(schema):
    top = schema["properties"]
    own = {"runs", "figure_dir", "threads", "experiment"}  # set by the workflow or demo only
    robustness = notebook_defaults(ROOT / "notebooks" / "10_robustness.ipynb")
    assert set(top["robustness"]["properties"]) == set(robustness) - own
    fisher = notebook_defaults(ROOT / "notebooks" / "06_bias_fisher.ipynb")
    passed = {"q_values", "fisher_samples", "relearn_rounds"}  # demo or bias: keys
    assert set(top["bias"]["properties"]["fisher"]["properties"]) == set(fisher) - own - passed


def _objects(node, path="schema"):
    """Every sub-schema that lists properties, with where it is."""
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}/{i}")


def test_every_section_forbids_unknown_keys(schema):
    """Sections with fixed keys forbid any other; maps keyed by names (per data set, per
    model) allow only those names (propertyNames)."""
    sections = dict(_objects(schema))
    assert {"schema", "schema/properties/decide", "schema/properties/decide/properties/"
            "sensitivity", "schema/$defs/experiment", "schema/$defs/federation",
            "schema/$defs/unlearning", "schema/$defs/resources"} <= set(sections)
    for path, node in sections.items():
        assert node.get("additionalProperties") is False, path
    for name in ("per_dataset", "per_model_forget_sets"):
        assert "propertyNames" in schema["$defs"][name]
    for name in ("per_model", "raw_targets"):
        assert "propertyNames" in schema["properties"][name]


@pytest.mark.parametrize("edit, where, key", [
    (lambda p: p.update(secondry={"rounds": 3}), "", "secondry"),
    (lambda p: p["experiment"]["federation"].update(lrr=0.1), "experiment/federation", "lrr"),
    (lambda p: p["decide"].update(sensitivity={"lr": 0.01, "arm": ["none"]}),
     "decide/sensitivity", "arm"),
    (lambda p: p["bias"]["fisher"].update(sigma=[0.1]), "bias/fisher", "sigma"),
])
def test_a_misspelt_key_is_an_error_naming_it(edit, where, key):
    profile = _profile("smoke")
    edit(profile)
    with pytest.raises(Exception) as err:
        validate(profile, str(SCHEMA), set_default=False)
    bad = err.value.__context__  # snakemake's WorkflowError wraps jsonschema's error
    assert isinstance(bad, jsonschema.ValidationError)
    assert "/".join(map(str, bad.absolute_path)) == where
    assert f"'{key}' was unexpected" in bad.message


def test_the_workflow_stops_on_a_misspelt_key_before_any_job(tmp_path):
    """`snakemake -n` with a profile edit that misspells `secondary` and a federation key:
    the run stops while parsing, with the key, where it is, and the keys allowed there."""
    for item in ("Snakefile", "rules", "schemas", "config", "notebooks"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    cases = {"secondry: {rounds: 3}\n": ("at the top level", "'secondry' was unexpected",
                                        "secondary"),
             "experiment: {federation: {lrr: 0.1}}\n": ("at experiment/federation",
                                                       "'lrr' was unexpected", "lr")}
    for i, (text, needles) in enumerate(cases.items()):
        edit = tmp_path / f"edit{i}.yaml"
        edit.write_text(text)
        run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1",
                              "--config", "profile=smoke", "--configfile", str(edit)],
                             cwd=tmp_path, capture_output=True, text=True)
        out = run.stdout + run.stderr
        assert run.returncode != 0, out
        assert "does not match schemas/config.schema.yaml" in out, out[-3000:]
        for needle in needles:
            assert needle in out, (needle, out[-3000:])
        assert "Job stats" not in out  # nothing was planned
