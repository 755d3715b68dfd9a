"""Experiment planning: the dataset fingerprint and the plan (plans.json, the contract between stages)."""
