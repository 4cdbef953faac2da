"""Downstream ecology: species models fitted on embeddings or covariates, and presence-only helpers."""
