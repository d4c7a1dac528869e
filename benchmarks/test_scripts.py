"""The scripts benchmarks/gpu.sh runs besides the suite (the scaling sweeps, the plan profile) run
end to end: checked at small sizes (TT_BENCH_SIZE=small, as in CI), skipped at the sizes of record."""

import json
import os
import subprocess
import sys

import pytest
from common import HERE, SMALL

pytestmark = pytest.mark.skipif(not SMALL, reason="a check of the scripts at TT_BENCH_SIZE=small")


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, os.path.join(HERE, script), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_profile_plan_reports_a_plan_and_its_operators():
    out = run("profile_plan.py", "--device", "cpu", "--window", "cached", "--beam", "4", "--horizon", "2",
              "--rows", "5")
    assert "# plan cpu cached beam 4 horizon 2:" in out and "aten operator calls" in out
    assert any(op in out for op in ("tt::decode_layers", "aten::addmm", "aten::linear"))  # the model's layers


def test_scaling_writes_its_sweeps_and_plot(tmp_path):
    run("scaling.py", "--quick", "--out", str(tmp_path))
    results = json.loads((tmp_path / "scaling.json").read_text())
    assert set(results["sweeps"]) == {"horizon", "beam_width", "context", "envs"}
    assert all(row["exact"] > 0 and row["cached"] > 0 for row in results["sweeps"]["horizon"])
    assert results["exact_linear_in_horizon"]["seconds_per_step"] > 0
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_table1_puts_each_cells_score_beside_its_baselines(tmp_path):
    """benchmarks/table1.py: a cell with a score.json shows its numbers, the others say they are not run."""
    import shutil

    cell = tmp_path / "hopper-medium-replay"
    cell.mkdir()
    shutil.copy(os.path.join(HERE, "table1", "hopper-medium-replay", "score.json"), cell / "score.json")
    sys.path.insert(0, HERE)
    from table1 import main

    table = main(str(tmp_path))
    (row,) = [line for line in table.splitlines() if line.startswith("| hopper-medium-replay ")]
    assert "**45.8**" in row and "| 44.3 |" in row and "| 91.5 |" in row
    assert table.count("not run yet") == 8
    assert json.loads((tmp_path / "table.json").read_text())[4]["status"] == "done"


def test_ttq_table_shows_each_agent_that_ran(tmp_path):
    """benchmarks/ttq.py: an agent with an eval.json shows its episodes, goals reached and score; the rest say
    they are not run; the bar plot is written."""
    import shutil

    agent = tmp_path / "pointmaze-medium" / "iql"
    agent.mkdir(parents=True)
    shutil.copy(os.path.join(HERE, "ttq", "pointmaze-medium", "iql", "eval.json"), agent / "eval.json")
    sys.path.insert(0, HERE)
    from ttq import main

    table = main(str(tmp_path))
    (line,) = [line for line in table.splitlines() if "IQL policy" in line and "pointmaze-medium" in line]
    evaluation = json.loads((agent / "eval.json").read_text())
    reached = sum(r > 0 for r in evaluation["returns"])
    assert f"| {len(evaluation['returns'])} | {reached} |" in line
    assert f"**{100 * sum(evaluation['normalized_scores']) / len(evaluation['returns']):.1f}**" in line
    assert table.count("not run yet") == 5 and (tmp_path / "ttq.png").read_bytes()[:4] == b"\x89PNG"
