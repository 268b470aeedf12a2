"""Runs of the study: settings, curricula, the trainer, run directories, plots and the demo.

    from timescale_kernels.experiments import make_config, Trainer, RunDir
    config = make_config("quick", curriculum="multi", target_N=6)
    summary = Trainer(config, RunDir("runs/multi")).run()
"""
from .config import CURRICULA, PRESETS, ConfigError, RunConfig, make_config
from .curricula import Curriculum
from .rundir import RunDir, RunDirError
from .scoring import load_any_checkpoint, score
from .trainer import Trainer, build_model

__all__ = ["CURRICULA", "PRESETS", "ConfigError", "RunConfig", "make_config", "Curriculum", "RunDir",
           "RunDirError", "Trainer", "build_model", "score", "load_any_checkpoint"]
