"""The package imports its names lazily: importing it (or its torch-free arms module, as
the Snakefile does) loads no torch, and every exported name is there on first use."""
import subprocess
import sys

import fedunlearn_lib

# what the package exported when it imported them eagerly
EXPORTS = ["ImageData", "load_dataset", "ExperimentConfig", "run_experiment", "FedConfig",
           "Federation", "ChannelMask", "build_model", "aggregate", "local_proc",
           "remove_channels", "select_channels", "tfidf_scores", "UnlearnConfig",
           "prune_for_classes"]


def test_every_exported_name_imports():
    assert set(EXPORTS) <= set(fedunlearn_lib.__all__)
    for name in fedunlearn_lib.__all__:
        assert getattr(fedunlearn_lib, name) is not None, name
    from fedunlearn_lib import ExperimentConfig, prune_for_classes  # noqa: F401
    from fedunlearn_lib import arms, unlearn
    assert unlearn.ARMS is arms.ARMS  # unlearn re-exports the torch-free table
    assert fedunlearn_lib.studies.__name__ == "fedunlearn_lib.studies"  # submodules too


def test_importing_the_package_and_its_arms_loads_no_torch():
    code = ("import sys\n"
            "import fedunlearn_lib\n"
            "from fedunlearn_lib.arms import ARMS\n"
            "assert 'tfidf-highest' in ARMS\n"
            "print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "False"
