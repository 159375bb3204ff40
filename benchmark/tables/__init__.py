"""The paper's tables and analyses, regenerated from run records (sections of leaderboard.md): one
module per table: ``table1`` (decodability regularisation), ``table2`` (generated retrieval
embeddings), ``funnel`` (the deployment funnel) and ``collapse`` (attention sinks, heat maps);
``common`` holds what they share."""

from benchmark.tables.collapse import (
           render_attention_comparison,
           render_collapse_profiles,
           render_collapse_table,
)
from benchmark.tables.common import BASELINE, MIXED_DEVICES, REFERENCE, SCALE, VISUAL
from benchmark.tables.funnel import render_funnel
from benchmark.tables.table1 import (
           PAPER_TABLE1,
           PAPER_VISUAL_ROW,
           equal_epoch_delta,
           render_table1,
           render_table1_paired,
)
from benchmark.tables.table2 import render_table2, render_table2_objectives

__all__ = ["BASELINE", "MIXED_DEVICES", "PAPER_TABLE1", "PAPER_VISUAL_ROW", "REFERENCE", "SCALE", "VISUAL",
           "equal_epoch_delta", "render_attention_comparison", "render_collapse_profiles", "render_collapse_table",
           "render_funnel", "render_table1", "render_table1_paired", "render_table2", "render_table2_objectives"]
