"""Evaluation: episodes in an environment (`episodes`), normalized scores over seeds and data sets
(`score`), and goal reaching on the built-in mazes (`goal`)."""
