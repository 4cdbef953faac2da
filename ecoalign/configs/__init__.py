"""Hydra config groups of `ecoalign adapt` and `ecoalign train-organism`, shipped as package data (pkg://ecoalign.configs)."""
