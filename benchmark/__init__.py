"""karma-bench: the benchmark harness (data, runs, evaluation, records, leaderboard)."""

import os

# oneDNN (PyTorch's bf16 matmuls on the CPU) keeps a compiled kernel per input shape, 1,024 of them by
# default. The LLM models' batches change shape every step (items per batch, history lengths), so the
# cache grew an HLLM run by about 1 GB an epoch (7 -> 15.7 GB); with 64 it stayed at 7.3-7.6 GB over 4
# epochs. Kernels are rebuilt, never changed: results are the same bits (tests/test_determinism.py).
# Set before torch runs its first bf16 op, which reads the variable; a value the user exported wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
