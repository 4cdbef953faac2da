"""Frozen-backbone embeddings of every plot window and view, computed once and kept on disk.

The backbone never changes during adaptation, so its embeddings (which are also the anchor targets) are
computed in one resumable pass, chunk by chunk, and keyed by data, pairing settings, backbone and weights.
Adapter epochs then run on this cache in seconds.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ecoalign.core.io import atomic_path, write_json

CACHE_VERSION = 1


@dataclass
class BackboneCache:
    plot_ids: np.ndarray  # (N,) str, plots with a usable window
    centres: np.ndarray  # (N, 2) raster-CRS coordinates
    embeddings: np.ndarray  # (N, A, D) float32, one row per augmentation view
    views: list[str]
    skipped: dict[str, list[str]]  # reason -> plot ids
    key: str
    path: Path
    plots_per_second: float | None = None
    reused: bool = False  # True when every embedding came from an earlier run's cache


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _write_chunks_to_npy(folder: Path, chunks, final: Path, shape: tuple[int, int, int]) -> None:
    """Stream chunk files into one .npy on disk: memory stays at one chunk however many plots there are."""
    with atomic_path(final) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        row = 0
        for s, _ in chunks:
            with np.load(folder / f"chunk_{s:07d}.npz") as z:
                n = len(z["kept"])
                if n:
                    out[row:row + n] = z["emb"]
                row += n
        out.flush()
        del out


def build_backbone_cache(*, reader, features, plot_ids: Sequence[str], centres: np.ndarray, views: Sequence[str],
                         key_parts: dict, cache_root: Path, batch_size: int = 16, progress: bool = True) -> BackboneCache:
    """Embed every plot window under every view; resume from finished chunks after a kill."""
    import torch
    from tqdm import tqdm

    from ecoalign.data.patches import augment

    key = cache_key({"version": CACHE_VERSION, **key_parts, "plots": list(map(str, plot_ids)), "views": list(views)})
    folder = Path(cache_root) / key
    final = folder / "embeddings.npy"
    index_file = folder / "index.json"
    if final.exists() and index_file.exists():
        index = json.loads(index_file.read_text())
        return BackboneCache(np.asarray(index["plot_ids"], dtype=object), np.asarray(index["centres"], dtype=np.float64),
                             np.load(final, mmap_mode="r"), index["views"], index["skipped"], key, folder,
                             index.get("plots_per_second"), reused=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "key.json", {"version": CACHE_VERSION, **key_parts, "views": list(views), "n_plots": len(plot_ids)})

    n = len(plot_ids)
    chunks = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    todo = [c for c in chunks if not (folder / f"chunk_{c[0]:07d}.npz").exists()]
    started, embedded = time.perf_counter(), 0
    bar = tqdm(total=n, initial=n - sum(e - s for s, e in todo), desc="backbone embeddings", unit="plot",
               disable=not progress, dynamic_ncols=True)
    for s, e in todo:
        patches, kept, skipped = reader.read_batch(centres[s:e])
        emb = np.zeros((len(kept), len(views), 0), np.float32)
        if kept:
            x = torch.from_numpy(patches)
            emb = np.stack([features(augment(x, v)).float().numpy() for v in views], axis=1)
        with atomic_path(folder / f"chunk_{s:07d}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, kept=np.asarray(kept, dtype=np.int64) + s, emb=emb,
                     skip_rows=np.asarray(list(skipped), dtype=np.int64) + s,
                     skip_reasons=np.asarray(list(skipped.values()), dtype=str))
        embedded += len(kept)
        bar.update(e - s)
    bar.close()
    elapsed = time.perf_counter() - started
    rate = embedded / elapsed if embedded and elapsed > 0 else None

    kept_rows, skipped_out, dim = [], {}, 0
    for s, _ in chunks:  # first pass: which rows were kept (small), so the final array can be preallocated
        with np.load(folder / f"chunk_{s:07d}.npz") as z:
            kept_rows.extend(z["kept"].tolist())
            dim = z["emb"].shape[-1] if len(z["kept"]) else dim
            for row, reason in zip(z["skip_rows"].tolist(), z["skip_reasons"].tolist()):
                skipped_out.setdefault(reason, []).append(str(plot_ids[row]))
    _write_chunks_to_npy(folder, chunks, final, (len(kept_rows), len(views), dim))
    index = {"plot_ids": [str(plot_ids[r]) for r in kept_rows], "centres": centres[kept_rows].tolist(),
             "views": list(views), "skipped": skipped_out, "plots_per_second": rate}
    write_json(index_file, index)
    for s, _ in chunks:
        (folder / f"chunk_{s:07d}.npz").unlink(missing_ok=True)
    return BackboneCache(np.asarray(index["plot_ids"], dtype=object), centres[kept_rows], np.load(final, mmap_mode="r"),
                         list(views), skipped_out, key, folder, rate)
