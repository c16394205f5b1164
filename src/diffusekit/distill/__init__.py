"""Few-step generation by training: progressive distillation, consistency models, rectified flow and reflow.

Each method reuses the core schedules, denoisers, solvers (as teachers), trainer and sampling loop, and
writes an ordinary run folder (``runs``).
"""

from .consistency import ConsistencyLoss, consistency_times, curriculum, distill_consistency, train_consistency
from .nested_grid import teacher_times
from .progressive import ProgressiveLoss, distill_progressive, progressive_target, stage_counts
from .reflow import ReflowLoss, distill_reflow, generate_couplings, load_couplings, straightness, trajectory_straightness
from .runs import cpu_seconds, student_config, train_student
from .teacher_step import SolverStep

__all__ = [
    "ReflowLoss", "distill_reflow", "generate_couplings", "load_couplings", "straightness", "trajectory_straightness",
    "ConsistencyLoss", "consistency_times", "curriculum", "distill_consistency", "train_consistency",
    "ProgressiveLoss", "SolverStep", "cpu_seconds", "distill_progressive", "progressive_target", "stage_counts",
    "student_config", "teacher_times", "train_student",
]
