"""Plans replayed as CUDA graphs: a search's hundreds of small kernels per planned transition, one launch."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch

from tt.cache import KVCache
from tt.config import PlanConfig
from tt.discretize import Discretizer
from tt.model import TrajectoryTransformer
from tt.rng import Philox
from tt.search.objectives import Objective
from tt.search.plan import PlanResult, Search, beam_plan, check_prefix


class CUDAGraphRecorder:
    """How `PlanGraphs` runs a search eagerly and records it: on the CUDA device of the search."""

    def __init__(self, device: torch.device):
        self.device = device

    def warm_up(self, run: Callable[[], PlanResult]) -> PlanResult:
        """Run once eagerly, off the capture's stream as torch advises (lazy initializations happen here)."""
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                result = run()
            torch.cuda.current_stream().wait_stream(side)
        return result

    def record(self, run: Callable[[], PlanResult]) -> tuple[Callable[[], None], PlanResult]:
        """Record `run` as a graph (nothing executes, so state such as the Philox offset is untouched);
        returns the replay function and the output tensors every replay rewrites."""
        with torch.cuda.device(self.device):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                result = run()
        return graph.replay, result


class PlanGraphs:
    """`beam_plan` replayed as CUDA graphs: a plan's whole search (hundreds of small kernels per
    planned transition) is captured once per input layout (number of plans, prefix length, padded
    or not) and replayed with new prefixes, one launch per plan.

    The Philox state is captured by address and advanced by every replay, so a sequence of plans
    draws exactly as the same sequence of eager plans. The first plan of a layout runs eagerly (it
    also warms up lazy initializations outside the capture); the next ones replay. At most
    `max_graphs` layouts are kept, the least recently used dropped first. `recorder` says how to
    run and record a search (a `CUDAGraphRecorder` by default). A graph may hold a copy of the
    model's weights (the fused decode step reads them stacked), so graphs are dropped and
    recaptured when a parameter has changed in place since (an optimizer step, `load_state_dict`).
    `objective`: what the searches maximize (default: the one `config.objective` names).
    """

    def __init__(self, model: TrajectoryTransformer, discretizer: Discretizer, config: PlanConfig, rng: Philox,
                 max_graphs: int = 16, recorder: CUDAGraphRecorder | None = None, objective: Objective | None = None):
        self.model, self.discretizer, self.config, self.rng = model, discretizer, config, rng
        self.objective = objective
        self.max_graphs = max_graphs
        self.recorder = recorder if recorder is not None else CUDAGraphRecorder(model.tok_emb.weight.device)
        self.failed: str | None = None  # why capturing failed, if it did (plans then run eagerly)
        self._graphs: OrderedDict[tuple, tuple[Search, Callable[[], None], PlanResult]] = OrderedDict()
        self._weights_version = self._parameter_versions()

    def _parameter_versions(self) -> tuple[int, ...]:
        """The parameters' version counters: every in-place change bumps one."""
        return tuple(p._version for p in self.model.parameters())

    @property
    def layouts(self) -> int:
        """How many captured layouts are held."""
        return len(self._graphs)

    @torch.no_grad()
    def plan(self, prefix_tokens: torch.Tensor, cache: KVCache | None = None) -> PlanResult:
        """`beam_plan(model, prefix_tokens, discretizer, config, rng, cache)`, from a graph when one
        is captured for this layout. Its tensors are the caller's (copies of the graph's outputs)."""
        if self.failed:
            return beam_plan(self.model, prefix_tokens, self.discretizer, self.config, self.rng, cache,
                             objective=self.objective)
        pad_transitions = check_prefix(self.model, prefix_tokens)
        versions = self._parameter_versions()
        if versions != self._weights_version:  # the graphs' copies of the weights are stale
            self._graphs.clear()
            self._weights_version = versions
        key = (tuple(prefix_tokens.shape), any(pad_transitions))
        if key not in self._graphs:
            return self._capture(key, prefix_tokens, pad_transitions, cache)
        self._graphs.move_to_end(key)
        search, replay, result = self._graphs[key]
        search.load(prefix_tokens, pad_transitions)
        replay()
        return PlanResult(result.tokens.clone(), result.score.clone())

    def _capture(self, key: tuple, prefix_tokens: torch.Tensor, pad_transitions: list[int],
                 cache: KVCache | None) -> PlanResult:
        device = self.model.tok_emb.weight.device
        search = Search(self.model, prefix_tokens.to(device, copy=True), pad_transitions, self.discretizer,
                        self.config, cache, objective=self.objective)
        eager = self.recorder.warm_up(lambda: search.run(self.rng))
        try:
            replay, result = self.recorder.record(lambda: search.run(self.rng))
        except RuntimeError as e:  # an op that cannot be captured: plan eagerly from now on
            warnings.warn(f"capturing the plan as a CUDA graph failed ({e}); planning eagerly", stacklevel=3)
            self.failed = str(e)
            return eager
        self._graphs[key] = (search, replay, result)
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return eager
