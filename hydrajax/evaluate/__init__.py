"""Evaluation: metrics as (sum, count) pieces (metrics) and the evaluation loop over a
config's validation set (loop)."""
