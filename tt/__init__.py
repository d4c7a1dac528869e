"""tt: a fast, faithful Trajectory Transformer."""

from tt.discretize import Discretizer
from tt.model import GPTConfig, TrajectoryTransformer
from tt.planner import PlanConfig, Planner, beam_plan
from tt.prediction import PredictConfig, predict

__all__ = ["Discretizer", "GPTConfig", "PlanConfig", "Planner", "PredictConfig", "TrajectoryTransformer", "beam_plan",
           "predict"]
__version__ = "0.1.0"
