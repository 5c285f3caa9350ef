"""The Experiment framework (see :mod:`.api` for the model, :mod:`.run` for what is written)."""
from .api import (CONTROL_SEED_OFFSET, Arm, Check, Context, Experiment, ExperimentConfig, Results,
                  SeedResult, control_arms, evaluate_checks)
from .data import DataConfig, Splits, load_splits, standardize
from .run import results_record, run, run_with_control, seed_result

__all__ = [
    "Arm", "Check", "Context", "Experiment", "ExperimentConfig", "Results", "SeedResult",
    "CONTROL_SEED_OFFSET", "control_arms", "evaluate_checks", "DataConfig", "Splits",
    "load_splits", "standardize", "run", "run_with_control", "results_record", "seed_result",
]
