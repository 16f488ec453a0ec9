"""The Snakemake workflow: the paper profile plans, the smoke profile runs end to end, a
profile edit reruns only what depends on it, a cluster executor gets each rule's declared
resources and the Slurm profile gives every rule its partition, parsing imports no torch,
and the fine-tuning rate and sensitivity runs are wired in when a profile asks for them."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
STUDIES = ("mia", "kl_distribution", "bias_fisher", "multiclass", "ablations", "robustness",
           "decide")
# the kind of each rule, which picks its threads and resources in config/<profile>.yaml
KIND = {"pretrain": "pretrain", "retrain": "pretrain", "unlearn": "unlearn",
        "finetune_rate": "unlearn", "report": "report", "feature_maps": "study",
        **{s: "study" for s in STUDIES}}
WORKFLOW = ("Snakefile", "rules", "schemas", "config", "notebooks", "profiles")


def _copy_workflow(dst: Path) -> Path:
    """A fresh copy of the workflow (no data, no results) in ``dst``."""
    for item in WORKFLOW:
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / item)
    return dst


def _snakemake(wd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(SNAKEMAKE + list(args), cwd=wd, capture_output=True, text=True,
                          check=check)


def _job_counts(out: str) -> dict[str, int]:
    """The dry run's job-stats table, rule -> count (with ``total``)."""
    stats = out[out.index("Job stats:"):]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, flags=re.M)}


def _jobs(out: str) -> list[dict]:
    """Every planned job of a dry run: rule, outputs, threads and resources."""
    jobs = []
    for block in re.split(r"^\[.*\]\n", out, flags=re.M):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        output = re.search(r"^    output: (.*)$", block, flags=re.M)
        threads = re.search(r"^    threads: (\d+)$", block, flags=re.M)
        res = re.search(r"^    resources: (.*)$", block, flags=re.M)
        jobs.append({"rule": head.group(1),
                     "output": output.group(1).split(", ") if output else [],
                     "threads": int(threads.group(1)) if threads else 1,
                     "resources": dict(kv.split("=", 1) for kv in res.group(1).split(", "))
                     if res else {}})
    return jobs


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory) -> str:
    """Dry run of the paper profile (64 cores, so that no rule's threads are scaled down)."""
    wd = _copy_workflow(tmp_path_factory.mktemp("paper"))
    return _snakemake(wd, "-n", "--cores", "64", "--config", "profile=paper").stdout


def test_paper_profile_plans_every_experiment(paper_plan):
    counts = _job_counts(paper_plan)
    # pretrain 22: 2 data sets x 8 models in the main grid (FedSGD, q = 0.1 / 0.01), plus
    # Table 1's sweep with its own federation (FedAvg, E = 5): 2 data sets x 3 q
    assert counts["pretrain"] == 22, paper_plan
    # unlearn 36: Table 2 / Figure 3, the last class of 2 data sets x 8 models: 16;
    # Table 4 (Table 5 is a subset of it), CIFAR-10 ResNet-20/56, VGG-11/19 x classes
    # 0, 9, 0+9: 12, of which class 9 is already in Table 2: +8;
    # Tables 3 and 6, Figure 4: ResNet-20 x {0+9, 0+5, 5+9, 0+5+9}, ResNet-56 x {0+9,
    # 0+5+9}, VGG-11 x {0+5+9}, VGG-19 x {0+5+9}: 8, of which 0+9 (ResNet-20/56) are
    # already in Table 4: +6; Table 1, 2 data sets x 3 q: +6; the ablations reuse
    # CIFAR-10 ResNet-20 class 9: +0. 16 + 8 + 6 + 6 = 36; the deciding comparison adds its
    # arms other than the paper's (none, random, l1, tfidf-lowest) on that run: 40
    assert counts["unlearn"] == 40, paper_plan
    # one retraining per pretraining and forget set, shared by every arm: 36
    assert counts["retrain"] == 36, paper_plan
    for rule in ("feature_maps", "report", "all") + STUDIES:
        assert counts[rule] == 1, rule
    assert counts["total"] == 108, paper_plan


def test_paper_profile_rules_declare_the_profile_resources(paper_plan):
    declared = yaml.safe_load((ROOT / "config/paper.yaml").read_text())["resources"]
    jobs = [j for j in _jobs(paper_plan) if j["rule"] != "all"]
    assert {j["rule"] for j in jobs} == set(KIND) - {"finetune_rate"}  # no rate candidates
    for job in jobs:
        want = declared[KIND[job["rule"]]]
        assert job["threads"] == want["threads"], job
        got = {k: int(job["resources"][k]) for k in ("gpu", "mem_mb", "runtime")}
        assert got == {k: want[k] for k in ("gpu", "mem_mb", "runtime")}, job


def test_slurm_profile_gives_every_rule_its_partition(paper_plan, tmp_path):
    """Every job of the paper grid is submitted with resources of its own rule in
    profiles/slurm (set-resources): on the GPU partition exactly when it asks for a GPU.
    And every rule the workflow defines (finetune_rate too) has an entry, but ``all``,
    which is local and submits nothing."""
    slurm = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    rules = slurm["set-resources"]
    jobs = [j for j in _jobs(paper_plan) if j["rule"] != "all"]
    assert len(jobs) == 107
    for job in jobs:
        assert job["rule"] in rules, job["rule"]
        want = "gpu" if int(job["resources"]["gpu"]) > 0 else "cpu"
        assert rules[job["rule"]].get("slurm_partition") == want, job
    listed = _snakemake(_copy_workflow(tmp_path), "--list-rules", "--config",
                        "profile=paper").stdout.split()
    assert set(listed) - {"all"} <= set(rules), set(listed) - set(rules)
    assert "finetune_rate" in listed


def _imported_modules(stderr: str) -> set[str]:
    """Top-level packages in ``python -X importtime`` output."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0]
            for line in stderr.splitlines() if line.startswith("import time:")}


def test_parsing_the_workflow_imports_no_torch(tmp_path):
    """Dry runs (the CLI) and the plan (Snakemake's API) parse the Snakefile and build the
    DAG without importing torch: cluster submissions and dry runs stay light."""
    wd = _copy_workflow(tmp_path)
    for profile in ("quick", "paper"):
        run = subprocess.run([sys.executable, "-X", "importtime", "-m", "snakemake", "-n",
                              "--cores", "1", "--config", f"profile={profile}"], cwd=wd,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        modules = _imported_modules(run.stderr)
        assert "fedunlearn_lib" in modules and "snakemake" in modules  # it did parse
        assert not modules & {"torch", "torchvision"}, profile
    api = ("import sys\n"
           "from fedunlearn_lib.plan import workflow_jobs\n"
           "jobs = workflow_jobs('config/paper.yaml')\n"
           "assert len(jobs) == 108, len(jobs)\n"
           "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    run = subprocess.run([sys.executable, "-c", api], cwd=wd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "[]"


def test_rate_choice_and_sensitivity_runs_are_wired_in():
    """With finetune_lr_candidates (and no finetune_lr) every pretraining and forget set
    gets one finetune_rate job (the none arm's settings, unlearning seed 0), whose file
    every unlearn job of that forget set reads; decide.sensitivity adds unlearn jobs at
    that fixed rate (no choice) that the decide job reads, and its table."""
    from fedunlearn_lib.plan import workflow_jobs

    over = {"experiment": {"finetune_lr_candidates": [0.1, 0.01]},
            "decide": {"sensitivity": {"lr": 0.02}}}
    jobs = workflow_jobs(ROOT / "config/smoke.yaml", over, snakefile=ROOT / "Snakefile")
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(job.rule, []).append(job)
    rates = by_rule["finetune_rate"]
    assert len(rates) == len(by_rule["retrain"]) == 3  # one per pretraining and forget set
    for job in rates:
        exp = job.params["experiment"]
        assert exp["unlearning"] == {"seed": 0}  # the only unlearning setting it reads
        assert exp["finetune_lr_candidates"] == [0.1, 0.01] and exp.get("finetune_lr") is None
    unlearn = by_rule["unlearn"]
    fixed = [j for j in unlearn if j.params["experiment"].get("finetune_lr") == 0.02]
    # the sensitivity runs: arms none and tfidf-highest, the first seed, unlearning seed 0
    assert sorted(j.wildcards["arm"] for j in fixed) == ["none", "tfidf-highest"]
    assert all("finetune_lr_candidates" not in j.params["experiment"] for j in fixed)
    assert len(unlearn) == 4 + 2
    dag = _dag_inputs(over)
    for job in unlearn:
        rate = [f for f in dag[job.wildcards["uhash"]] if f.endswith("finetune_rate.json")]
        assert len(rate) == (0 if job in fixed else 1), job.wildcards
    decide = by_rule["decide"][0]
    assert len(decide.runs) == 2  # the decide runs; the sensitivity runs are not its runs
    assert any(f.endswith("table_decide_sensitivity.csv") for f in dag["decide"])


def _dag_inputs(config: dict) -> dict[str, list[str]]:
    """Inputs of the smoke DAG's jobs under ``config``: unlearn jobs by their u-hash, the
    decide job's inputs and outputs under "decide"."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings,
                                          ResourceSettings)

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1),
                          config_settings=ConfigSettings(
                              config={**config, "profile": "smoke"},
                              configfiles=[ROOT / "config/smoke.yaml"]),
                          snakefile=ROOT / "Snakefile", workdir=ROOT)
        wf.dag(DAGSettings(forceall=True))
        workflow = wf._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True,
                              nolock=True)
        workflow._build_dag()
        out = {}
        for job in workflow.dag.needrun_jobs(exclude_finished=False):
            if job.rule.name == "unlearn":
                out[dict(job.wildcards.items())["uhash"]] = list(map(str, job.input))
            elif job.rule.name == "decide":
                out["decide"] = list(map(str, job.input)) + list(map(str, job.output))
        return out


def _readme_job_table() -> dict[str, int]:
    """The table under README's "### Paper profile: jobs": ``| rule | count |`` rows."""
    text = (ROOT / "README.md").read_text()
    heading = re.search(r"^### Paper profile: jobs\s*$", text, flags=re.M)
    assert heading, 'README.md has no "### Paper profile: jobs" section'
    rows = {}
    for line in text[heading.end():].lstrip("\n").splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip().strip("`*") for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[1].isdigit():
            rows[cells[0]] = int(cells[1])
    return rows


def test_readme_paper_job_table_matches_the_dry_run(paper_plan):
    counts = _job_counts(paper_plan)
    table = "\n".join(["| rule | jobs |", "| --- | --- |"]
                      + [f"| {rule} | {n} |" for rule, n in counts.items()])
    print(f"\nthe paper profile's dry run, for README.md:\n{table}")
    assert _readme_job_table() == counts, table


def test_cluster_executor_gets_the_declared_resources(tmp_path):
    """One smoke pretraining through the cluster-generic executor (profiles/cluster-local):
    the submit command receives the threads and resources the profile declares."""
    pytest.importorskip("snakemake_executor_plugin_cluster_generic")
    wd = _copy_workflow(tmp_path)
    # the smoke profile with a shorter pretraining (its resources unchanged): the job only
    # has to run through the executor
    smoke = yaml.safe_load((wd / "config/smoke.yaml").read_text())
    smoke["experiment"].update(rounds=1, train_per_class=10, test_per_class=5)
    (wd / "short.yaml").write_text(yaml.safe_dump(smoke))
    args = ("--config", "profile=smoke", "--configfile", "short.yaml")
    plan = _snakemake(wd, "-n", "--cores", "1", *args).stdout
    target = next(j["output"][0] for j in _jobs(plan)  # output[0]: the checkpoint
                  if j["rule"] == "pretrain" and "/main/digits/resnet20/" in j["output"][0])
    run = _snakemake(wd, "--profile", "profiles/cluster-local", *args, "--", target,
                     check=False)
    log = wd / ".snakemake/cluster-local"
    jobs_log = log / "submitted.jobs.log"
    assert run.returncode == 0, run.stderr[-3000:] + (
        jobs_log.read_text()[-3000:] if jobs_log.exists() else "")
    assert (wd / target).stat().st_size > 0
    submitted = [dict(kv.split("=", 1) for kv in line.split("\t"))
                 for line in (log / "submitted.tsv").read_text().splitlines()]
    want = yaml.safe_load((wd / "config/smoke.yaml").read_text())["resources"]["pretrain"]
    assert submitted == [{"rule": "pretrain", **{k: str(v) for k, v in want.items()}}]


@pytest.mark.slow
def test_smoke_profile_builds_figures_and_then_has_nothing_to_do(tmp_path):
    wd = _copy_workflow(tmp_path)
    run = _snakemake(wd, "--cores", "2", "--config", "profile=smoke", check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    fig = wd / "results" / "smoke" / "figures"
    figures = ("fig2_feature_maps", "fig2_activations", "fig3_accuracy_curves",
               "fig4_multiclass_curves", "fig5_class_accuracy", "fig_decide", "fig_ablations",
               "fig_robustness", "fig_training_curves")
    tables = ("table1", "table2", "table2_runs", "table_training", "table3", "table4", "table5",
              "table_decide", "table_decide_sensitivity", "table_ablations", "table_ablation_ratio", "table_ablation_apply",
              "table_ablation_stability", "table_idf_readings", "table_robustness",
              "table_jobs")
    for name in [f"{f}.{e}" for f in figures for e in ("png", "pdf")] + \
            [f"{t}.{e}" for t in tables for e in ("csv", "md")]:
        assert (fig / name).stat().st_size > 0, name
    notebooks = wd / "results/smoke/notebooks"
    # one retraining per forget set, shared by every arm and unlearning seed
    assert len(list(notebooks.glob("02_retrain_main_digits_resnet20_q0.1_seed0_p*_forget9"
                                   ".ipynb"))) == 1
    assert len(list(notebooks.glob("03_unlearn_main_digits_resnet20_q0.1_seed0_p*_forget9_"
                                   "*-s*-u*.ipynb"))) == 4  # tfidf-highest and none, at
    # the chosen rate and at decide.sensitivity's
    assert len(list(notebooks.glob("12_finetune_rate_*.ipynb"))) == 3  # per retraining
    for nb in ("04_mia", "05_kl_distribution", "06_bias_fisher", "07_multiclass", "08_ablations",
               "10_robustness", "11_decide"):
        assert (notebooks / f"{nb}.ipynb").exists(), nb
    decide = pd.read_csv(fig / "table_decide.csv")
    assert list(decide["arm"]) == ["none", "tfidf-highest", "retrained"]
    assert list(decide["n"]) == [1, 1, 1]
    jobs = pd.read_csv(fig / "table_jobs.csv")  # every job but the report (and "all")
    plan = jobs.iloc[:-1]["rule"].value_counts().to_dict()
    assert jobs["seconds"].iloc[-1] > 0 and plan["unlearn"] == 6 and plan["retrain"] == 3
    assert plan["finetune_rate"] == 3
    assert "No reference tables" in (fig / "comparison.md").read_text()  # none for smoke
    again = _snakemake(wd, "-n", "--cores", "2", "--config", "profile=smoke")
    assert "Nothing to be done" in again.stdout + again.stderr

    # Another R for ResNet on digits: every unlearning run, and what reads them, is planned
    # again, into new run folders beside the old ones; no pretraining or retraining, and
    # not Figure 2 (it reads a pretrained model only).
    smoke = yaml.safe_load((wd / "config/smoke.yaml").read_text())
    smoke["ratio"]["digits"]["resnet"] = 0.2
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(smoke))
    out = _snakemake(wd, "-n", "--cores", "2", "--config", "profile=smoke",
                     "--configfile", str(edited)).stdout
    expected = {"unlearn": plan["unlearn"], "report": 1, "all": 1, **dict.fromkeys(STUDIES, 1)}
    assert _job_counts(out) == {**expected, "total": sum(expected.values())}, out
    for job in (j for j in _jobs(out) if j["rule"] == "unlearn"):
        folder = (wd / job["output"][0]).parent
        assert not folder.exists() and (folder.parent / "retrain.pt").exists() \
            and (folder.parent.parent / "pretrain.pt").exists(), folder

    # A study parameter (Snakemake's params trigger): the studies that read it rerun.
    smoke = yaml.safe_load((wd / "config/smoke.yaml").read_text())
    smoke["relearn_rounds"] += 1
    edited.write_text(yaml.safe_dump(smoke))
    out = _snakemake(wd, "-n", "--cores", "2", "--config", "profile=smoke",
                     "--configfile", str(edited)).stdout
    assert _job_counts(out) == {"bias_fisher": 1, "multiclass": 1, "ablations": 1, "decide": 1,
                                "report": 1, "all": 1, "total": 6}, out
