# The data step. Before the first job (onstart: once, in the snakemake process itself,
# also when it submits jobs to a cluster, never in the jobs, dry runs or --touch), every
# data set the planned jobs read from disk is checked under the profile's data_root;
# CIFAR-10/100 are downloaded there when missing (the folder is created; an official
# archive already there is extracted). When that fails (no network) the workflow stops
# before any job, with one message saying what to put where. The bundled digits need
# nothing. Parsing stays torch-free: the library is imported here only when run.

DATA_RULES = {"report", "all"}  # the rules that read no images (the rest do)
TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def data_on_disk():
    """The data sets (loader names) the profile's runs read from under data_root."""
    return sorted({loader(d) for d in config["datasets"]} - {"digits"})


def data_hints():
    """The workflow's ways to point at data that is elsewhere."""
    hints = "Or give the folder that holds it: --config data_root=<folder>."
    if len(config["datasets"]) == 1:
        hints += ("\nOr use an ImageFolder tree (<folder>/train/<class>/*.png and "
                  "<folder>/test/<class>/*.png): --config data_format=imagefolder "
                  "data_root=<folder>.")
    return hints


def check_data():
    """Make sure the planned jobs find their images; download CIFAR-10/100 if needed.
    Raises one WorkflowError naming what to put where when a data set cannot be had."""
    needed = data_on_disk()
    if not needed or workflow.touch:
        return
    try:  # only when a planned job reads images (not, e.g., a report-only rerun)
        rules = {job.rule.name for job in workflow.dag.needrun_jobs()}
    except Exception:  # an internal API: when it changes, check anyway
        rules = None
    if rules is not None and rules <= DATA_RULES:
        return
    root = config.get("data_root")
    head = f"Profile '{PROFILE}'"
    if root is None:
        raise WorkflowError(
            f"{head} reads {', '.join(needed)} but sets no data_root: pass --config "
            f"data_root=<folder> (CIFAR-10/100 are downloaded there when missing).")
    problems = []
    for name in needed:
        if name == "imagefolder":
            if not all((Path(root) / split).is_dir() for split in ("train", "test")):
                problems.append(
                    f"{head} reads an ImageFolder tree (data_format=imagefolder) from "
                    f"{root}/, which lacks train/ or test/: put {root}/train/<class>/*.png "
                    f"and {root}/test/<class>/*.png there, or pass --config "
                    f"data_root=<folder> with the folder that holds them.")
            continue
        from fedunlearn_lib import data

        if data.cifar_present(name, root):
            continue
        title = TITLES[name]
        logger.info(f"{title} is not under {root}/: downloading it there, once, before "
                    f"the first job")
        try:
            data.fetch_cifar(name, root)
        except RuntimeError as err:
            cause = err.__cause__ or err
            problems.append(
                f"{head} reads {title} from {root}/ (its data_root), which does not hold it, "
                f"and downloading it there failed ({type(cause).__name__}: {cause}).\n"
                f"Without network, {data.where_to_put(name, root + '/')}.")
    if problems:
        hints = [data_hints()] if "imagefolder" not in needed else []
        raise WorkflowError("\n".join(problems + hints + [
            "No job has run; run snakemake again once the data is in place."]))


onstart:
    check_data()
