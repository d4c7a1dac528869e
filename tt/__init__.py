"""tt: a fast, faithful Trajectory Transformer."""

from tt.discretize import Discretizer
from tt.model import GPTConfig, TrajectoryTransformer
from tt.planner import PlanConfig, Planner, beam_plan

__all__ = ["Discretizer", "GPTConfig", "PlanConfig", "Planner", "TrajectoryTransformer", "beam_plan"]
__version__ = "0.1.0"
