"""Photos to embeddings: image folders, decoding with unreadable files skipped and listed, batched embedding
with read-ahead; and ``embed_images``, the Python face of ``ecoalign embed-images``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ecoalign.core.errors import EcoalignInputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """Image files under a folder (recursive, sorted); a single image file is a folder of one."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise EcoalignInputError("no such image folder", path=folder, expected="a folder of photos")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise EcoalignInputError("no image files found", path=folder,
                                 expected=f"files ending in {', '.join(IMAGE_SUFFIXES)}")
    return files


def open_rgb(path, min_side: int | None = None):
    """Decode fully (so truncated files fail here, not later) and convert to RGB.

    With ``min_side`` a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose sides stay >= min_side
    (libjpeg's DCT scaling): a model that resizes to 224 px need not decode a 4000 px photo in full.
    """
    from PIL import Image

    with Image.open(path) as im:
        if min_side:
            im.draft("RGB", (min_side, min_side))
        im.load()
        return im.convert("RGB")


def embed_items(encoder, items: Iterable[tuple[str, object, object]], *, batch_size: int = 64,
                total: int | None = None, progress: bool = True, what: str = "images",
                on_batch: Callable[[list[str], list, np.ndarray], None] | None = None
                ) -> tuple[list[str], list, np.ndarray, list[tuple[str, str]]]:
    """Embed (name, PIL image or path, payload) items in batches, skipping unreadable images.

    Returns names, payloads and (N, D) embeddings of the images that were read, and (name, reason) for each
    skipped one. ``on_batch`` sees every batch (streaming writers).
    """
    import itertools
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    names, payloads, parts, skipped = [], [], [], []
    bar = tqdm(total=total, unit=" img", desc=f"[ecoalign] {what}", disable=not progress)
    preprocess = getattr(encoder, "preprocess", None)  # run in the loader threads, beside the model
    min_side = (getattr(encoder, "info", None) or {}).get("image_px")

    def load(item):
        name, image, payload = item
        try:
            image = image if not isinstance(image, (str, Path)) else open_rgb(image, min_side)
            return name, (preprocess(image.convert("RGB")) if preprocess else image), payload, None
        except Exception as exc:  # PIL raises many types for broken files; all mean "skip and list"
            return name, None, payload, f"{type(exc).__name__}: {exc}"

    def flush(batch):
        if not batch:
            return
        images = [b[1] for b in batch]
        if preprocess:
            import torch

            images = torch.stack(images)
        emb = np.asarray(encoder.embed(images, batch_size=len(batch)), dtype=np.float32)
        bn, bp = [b[0] for b in batch], [b[2] for b in batch]
        names.extend(bn)
        payloads.extend(bp)
        parts.append(emb)
        if on_batch is not None:
            on_batch(bn, bp, emb)

    batch: list = []
    source, pending = iter(items), deque()
    # one reader thread decodes the next images while the model runs (more would crowd torch's own threads)
    with ThreadPoolExecutor(max_workers=1) as pool:
        def top_up():  # bounded read-ahead: memory stays at ~2 batches however large the folder
            for item in itertools.islice(source, max(0, 2 * batch_size - len(pending))):
                pending.append(pool.submit(load, item))

        top_up()
        while pending:
            name, image, payload, error = pending.popleft().result()
            top_up()
            bar.update(1)
            if error is not None:
                skipped.append((name, error))
                continue
            batch.append((name, image, payload))
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        flush(batch)
    bar.close()
    dim = parts[0].shape[1] if parts else int(getattr(encoder, "embed_dim", 0))
    return names, payloads, (np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)), skipped


def folder_items(folder: str | Path) -> tuple[Iterable[tuple[str, Path, None]], int]:
    """(items, count) for ``embed_items``: (path relative to the folder, path, None) per image file."""
    root = Path(folder)
    files = list_images(root)
    base = root if root.is_dir() else root.parent
    return ((str(p.relative_to(base)), p, None) for p in files), len(files)


def embed_folder(encoder, folder: str | Path, *, batch_size: int = 64, progress: bool = True):
    """(table, skipped): one row per readable image, ``file_name`` then ``emb_000``... (pybioclip's embed, flat)."""
    import pandas as pd

    from ecoalign.aerial.embed import EMBED_PREFIX

    items, total = folder_items(folder)
    names, _, emb, skipped = embed_items(encoder, items, batch_size=batch_size, total=total, progress=progress,
                                         what="embed")
    cols = pd.DataFrame(emb, columns=[f"{EMBED_PREFIX}{j:03d}" for j in range(emb.shape[1])])
    table = pd.concat([pd.DataFrame({"file_name": names}), cols], axis=1)
    return table, skipped


def embed_images(images: str | Path, encoder, *, weights: str | None = "none", device: str = "cpu",
                 batch_size: int = 64, out: str | Path | None = None, overwrite: bool = False,
                 progress: bool = True):
    """Embed a folder of photos (searched recursively) or one photo with an organism encoder.

    Python face of ``ecoalign embed-images``. ``encoder``: a loaded organism encoder, or a
    name for ``load_organism_encoder`` (run or encoder directory, ``open_clip:ARCH`` with ``weights``,
    ``local-dir:``, ``bioclip``). Returns a DataFrame, one row per readable image: ``file_name`` (relative to the
    folder) and ``emb_000``...; ``.attrs["ecoalign"]`` holds the encoder's identity and the skipped images.
    With ``out`` (.csv or .parquet) the table is written too, the skipped images beside it (``<out>.skipped.csv``).
    """
    from ecoalign.encoders.organism import as_organism_encoder
    from ecoalign.organism.outputs import (
        TABLE_SUFFIXES,
        check_out,
        report_skipped,
        write_table,
    )

    out = check_out(out, overwrite, TABLE_SUFFIXES)
    enc = as_organism_encoder(encoder, weights=weights, device=device)
    table, skipped = embed_folder(enc, images, batch_size=batch_size, progress=progress)
    meta = {"encoder": enc.identity(), "images": str(images)}
    if out is not None:
        write_table(table, out, meta)
        log.info("wrote %d image embeddings (D=%d) to %s", len(table), enc.embed_dim, out)
    table.attrs["ecoalign"] = {**meta, "skipped": report_skipped(skipped, out)}
    return table
