"""Organism CLIP data and evaluation: curation into webdataset shards, the generated organism world, metrics."""
