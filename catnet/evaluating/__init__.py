"""Measuring a checkpoint on a tagged folder: `evaluate`, the mistakes and the HTML report."""
