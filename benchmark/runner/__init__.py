"""The suite runner, one module per job; data flows one way through it:
``plan`` (which runs, and which records are stale) -> ``search`` (the equal tuning budget) ->
``execute`` (one run: data view, training, evaluation, record, embeddings) -> the funnel pass over the
stored embeddings (``benchmark.funnel.runs``) -> ``report`` (leaderboard.md),
with ``suite`` driving them, in one process or as one unit of ``--jobs N``."""

from benchmark.runner.execute import load_log
from benchmark.runner.plan import format_plan, plan, plan_units, unit_key
from benchmark.runner.report import regenerate_leaderboard
from benchmark.runner.suite import StrictStop, finish, run_planned, run_suite

__all__ = ["StrictStop", "finish", "format_plan", "load_log", "plan", "plan_units", "regenerate_leaderboard",
           "run_planned", "run_suite", "unit_key"]
