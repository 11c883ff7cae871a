"""Drift and quality checks over the inference log, and the retraining trigger."""
