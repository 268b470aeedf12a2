"""Curricula live in timescale_kernels.curricula (below the analyses, which read them too); this module
keeps the import path that runs and scripts already use."""
from ..curricula import CURRICULA, REGISTRY, ConfigError, Curriculum, CurriculumKind, get_curriculum

__all__ = ["CURRICULA", "REGISTRY", "ConfigError", "Curriculum", "CurriculumKind", "get_curriculum"]
