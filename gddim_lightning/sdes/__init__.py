"""Linear diffusion processes (pure torch, float64 numerics)."""

from .base import LinearSDE, as_time
from .cld import CLD
from .dct import dct2, dct_frequencies, dct_matrix, idct2
from .layout import BlockLayout
from .operators import BlockOp, ProcessOperators
from .scalar import BDM, ScalarBlockSDE, VPSDE
from .schedules import CosineLogSNRSchedule, CosineSchedule, LinearSchedule, NoiseSchedule

__all__ = [
    "BDM", "BlockLayout", "BlockOp", "CLD", "CosineLogSNRSchedule", "CosineSchedule", "LinearSDE", "LinearSchedule",
    "NoiseSchedule", "ProcessOperators", "ScalarBlockSDE", "VPSDE", "as_time", "dct2", "dct_frequencies", "dct_matrix", "idct2",
]
