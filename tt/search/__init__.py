"""The search: one loop per kind of search, objectives as objects, the beams' cache behind them.

`beam_plan` plans a batch of prefixes; `tt.Planner` plans inside a Gymnasium loop; `Search` is a
prepared search (what CUDA graphs capture, `PlanGraphs`). Objectives: `Return` (offline RL), `CriticReturn` (TT+Q),
`Likelihood` (imitation), `ForcedActions` (open-loop prediction); see `tt.search.objectives`.
"""

from tt.search.graphs import CUDAGraphRecorder, PlanGraphs
from tt.search.loops import Candidates
from tt.search.objectives import (
                                  CriticReturn,
                                  ForcedActions,
                                  Likelihood,
                                  Objective,
                                  Return,
                                  TokenObjective,
                                  TransitionObjective,
                                  named,
)
from tt.search.plan import (
                                  PlanResult,
                                  Search,
                                  beam_plan,
                                  check_config,
                                  check_memory,
                                  check_prefix,
                                  pad_prefixes,
                                  search_memory,
                                  search_rows,
)
from tt.search.planner import Plan, Planner

__all__ = ["CUDAGraphRecorder", "Candidates", "CriticReturn", "ForcedActions", "Likelihood", "Objective", "Plan",
           "PlanGraphs", "PlanResult", "Planner", "Return", "Search", "TokenObjective", "TransitionObjective",
           "beam_plan", "check_config", "check_memory", "check_prefix", "named", "pad_prefixes", "search_memory",
           "search_rows"]
