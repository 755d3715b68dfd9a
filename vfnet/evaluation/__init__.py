"""Evaluation: folder evaluation and cross-validation; the measures they use are in :mod:`vfnet.measures`."""
