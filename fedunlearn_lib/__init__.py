"""fedunlearn: federated class unlearning by TF-IDF-guided channel pruning (Wang et al. 2022)."""
from .data import ImageData, load_dataset
from .experiment import ExperimentConfig, run_experiment
from .federated import FedConfig, Federation
from .masking import ChannelMask
from .models import build_model
from .procs import aggregate, local_proc
from .pruning import remove_channels, select_channels
from .tfidf import tfidf_scores
from .unlearn import UnlearnConfig, prune_for_classes

__all__ = ["ImageData", "load_dataset", "ExperimentConfig", "run_experiment", "FedConfig",
           "Federation", "ChannelMask", "build_model", "aggregate", "local_proc",
           "remove_channels", "select_channels", "tfidf_scores", "UnlearnConfig",
           "prune_for_classes"]
