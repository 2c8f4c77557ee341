"""Downstream utility: does synthetic data help a diagnostic classifier? (model-sharing study protocol)"""

from breastgan.utility.classifiers import CLASSIFIERS
from breastgan.utility.experiment import ExperimentConfig, ExperimentResult, load_experiment_config, run_experiment
from breastgan.utility.metrics import binary_metrics

__all__ = ["CLASSIFIERS", "ExperimentConfig", "ExperimentResult", "load_experiment_config", "run_experiment", "binary_metrics"]
