"""Example external models (bring your own model: see benchmark/byo.py)."""
