"""tt: a fast, faithful Trajectory Transformer."""

from tt.config import PlanConfig
from tt.discretize import Discretizer
from tt.model import GPTConfig, TrajectoryTransformer
from tt.predict.experiment import PredictConfig, predict
from tt.search import Planner, beam_plan

__all__ = ["Discretizer", "GPTConfig", "PlanConfig", "Planner", "PredictConfig", "TrajectoryTransformer", "beam_plan",
           "predict"]
__version__ = "0.1.0"
