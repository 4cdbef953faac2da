"""Spatial block split: whole square blocks go to train, validation or test, so neighbours never leak."""
from __future__ import annotations

import numpy as np

from ecoalign.core.errors import EcoalignInputError

SPLITS = ("train", "val", "test")


def block_ids(centres: np.ndarray, block_size_m: float) -> np.ndarray:
    """One integer id per square block of side ``block_size_m`` (coordinates in metres)."""
    cells = np.floor(np.asarray(centres, dtype=np.float64) / float(block_size_m)).astype(np.int64)
    _, ids = np.unique(cells, axis=0, return_inverse=True)
    return ids.ravel()


def spatial_block_split(centres: np.ndarray, *, block_size_m: float, val_fraction: float, test_fraction: float,
                        seed: int) -> np.ndarray:
    """Label each plot 'train', 'val' or 'test'; blocks are shuffled, then test and val are filled to their share."""
    n = len(centres)
    if n < 3:
        raise EcoalignInputError(f"only {n} usable plots: too few to split into train/val/test")
    blocks = block_ids(centres, block_size_m)
    n_blocks = blocks.max() + 1
    if n_blocks < 3:
        raise EcoalignInputError(
            f"all {n} plots fall into {n_blocks} spatial block(s) of {block_size_m} m",
            expected="a smaller data.block_size_m so that train, validation and test get separate blocks")
    order = np.random.default_rng(seed).permutation(n_blocks)
    counts = np.bincount(blocks, minlength=n_blocks)
    labels = np.empty(n_blocks, dtype=object)
    targets = {"test": test_fraction * n, "val": val_fraction * n}
    filled = {"test": 0, "val": 0}
    for b in order:
        for split in ("test", "val"):
            if filled[split] < targets[split] and (filled[split] == 0 or filled[split] + counts[b] <= targets[split] * 1.5):
                labels[b] = split
                filled[split] += counts[b]
                break
        else:
            labels[b] = "train"
    out = labels[blocks]
    for split in SPLITS:
        if not (out == split).any():
            raise EcoalignInputError(f"the spatial split left '{split}' empty ({n} plots in {n_blocks} blocks)",
                                     expected="a smaller data.block_size_m or more plots")
    return out.astype(str)
