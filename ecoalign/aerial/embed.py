"""``ecoalign embed``: any encoder + points + raster(s) -> one row per point with its embedding.

Windows are read and embedded in batches through the resumable backbone cache, so a killed job resumes
and a repeated one is free; the table is written to GeoParquet row group by row group (memory stays flat
as the number of points grows), with the encoder's identity in the file metadata.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import atomic_path

EMBED_PREFIX = "emb_"
META_KEY = b"ecoalign"


def _file_fingerprint(path: Path) -> dict:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _prepare(points, rasters: Sequence[str | Path], encoder, *, patch_size_m: float | None,
             max_nodata_fraction: float, batch_size: int, id_column: str, progress: bool):
    from ecoalign.data.patches import PatchReader, band_stats, open_rasters
    from ecoalign.data.plots import plot_centres, read_plots
    from ecoalign.core.paths import cache_dir
    from ecoalign.aerial.backbone_cache import build_backbone_cache

    if isinstance(points, (str, Path)):
        points = read_plots(points, id_column=id_column)
    elif id_column in points.columns:
        points = points.set_index(points[id_column].astype(str), drop=False)
    else:
        points = points.set_index(points.index.astype(str), drop=False)
    if points.crs is None:
        raise EcoalignInputError("the points have no CRS", expected="a GeoDataFrame/file with a CRS")
    if points.index.duplicated().any():
        raise EcoalignInputError(f"point id '{points.index[points.index.duplicated()][0]}' appears more than once",
                                 expected=f"unique ids in '{id_column}'")
    if not rasters:
        raise EcoalignInputError("no raster given", expected="one or more GeoTIFFs with the encoder's bands")
    sources = open_rasters([Path(r) for r in rasters], encoder.wavelengths_um)
    if encoder.band_mean is not None:
        mean, std = encoder.band_mean, encoder.band_std
    else:
        mean, std = band_stats(sources)
    size_m = float(patch_size_m or encoder.patch_size_m or 100.0)
    centres = plot_centres(points, sources[0].crs)
    ids = [str(i) for i in points.index]
    key = {"rasters": [_file_fingerprint(s.path) for s in sources], "patch_size_m": size_m,
           "max_nodata_fraction": max_nodata_fraction, "backbone": encoder.info.as_dict(),
           "mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist(), "input_px": encoder.info.input_px}
    with PatchReader(sources, size_m=size_m, out_px=encoder.info.input_px, max_nodata_fraction=max_nodata_fraction,
                     mean=mean, std=std) as reader:
        cache = build_backbone_cache(reader=reader, features=encoder.features, plot_ids=ids, centres=centres,
                                     views=["identity"], key_parts=key, cache_root=cache_dir() / "embeddings",
                                     batch_size=batch_size, progress=progress)
    if len(cache.plot_ids) == 0:
        raise EcoalignInputError(
            f"none of the {len(ids)} points has a usable window in the raster(s) "
            f"(skipped: { {k: len(v) for k, v in cache.skipped.items()} })",
            expected="points inside the raster footprint (they are reprojected to the raster CRS)")
    return points, cache, size_m


def _batches(points, cache, encoder, rows: int) -> Iterator[tuple[list[str], object, np.ndarray]]:
    for s in range(0, len(cache.plot_ids), rows):
        ids = list(cache.plot_ids[s:s + rows])
        emb = encoder.head(np.asarray(cache.embeddings[s:s + rows, 0]))
        yield ids, points.loc[ids], np.asarray(emb, dtype=np.float32)


def _metadata(encoder, cache, size_m: float, n_points: int) -> dict:
    return {"encoder": encoder.identity(), "random_weights": encoder.random_weights, "patch_size_m": size_m,
            "points": n_points, "embedded": int(len(cache.plot_ids)),
            "skipped": {k: v for k, v in cache.skipped.items()}, "embedding_prefix": EMBED_PREFIX}


def embed_points(points, rasters: Sequence[str | Path], encoder, *, patch_size_m: float | None = None,
                 max_nodata_fraction: float = 0.5, batch_size: int = 16, id_column: str = "plot_id",
                 progress: bool = False):
    """A GeoDataFrame (id, geometry, emb_000..) of the points that have a usable window; skips in ``.attrs``."""
    import geopandas as gpd
    import pandas as pd

    if isinstance(encoder, (str, Path)):
        from ecoalign.encoders.registry import load_encoder

        encoder = load_encoder(encoder)
    points, cache, size_m = _prepare(points, rasters, encoder, patch_size_m=patch_size_m,
                                     max_nodata_fraction=max_nodata_fraction, batch_size=batch_size,
                                     id_column=id_column, progress=progress)
    parts = []
    for ids, pts, emb in _batches(points, cache, encoder, 4096):
        cols = pd.DataFrame(emb, columns=[f"{EMBED_PREFIX}{j:03d}" for j in range(emb.shape[1])], index=pts.index)
        parts.append(pd.concat([pd.DataFrame({id_column: ids}, index=pts.index), cols], axis=1)
                     .assign(geometry=pts.geometry.values))
    out = gpd.GeoDataFrame(pd.concat(parts), geometry="geometry", crs=points.crs).reset_index(drop=True)
    out.attrs["ecoalign"] = _metadata(encoder, cache, size_m, len(points))
    return out


def write_embeddings(points, rasters: Sequence[str | Path], encoder, out: str | Path, *, overwrite: bool = False,
                     id_column: str = "plot_id", patch_size_m: float | None = None, max_nodata_fraction: float = 0.5,
                     batch_size: int = 16, rows_per_group: int = 4096, progress: bool = True) -> dict:
    """Stream embeddings into a GeoParquet file (atomically); returns the metadata written into it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    if out.exists() and not overwrite:
        raise EcoalignInputError("output exists", path=out, expected="another --out, or --overwrite")
    points, cache, size_m = _prepare(points, rasters, encoder, patch_size_m=patch_size_m,
                                     max_nodata_fraction=max_nodata_fraction, batch_size=batch_size,
                                     id_column=id_column, progress=progress)
    meta = _metadata(encoder, cache, size_m, len(points))
    geo = {"version": "1.0.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "crs": json.loads(points.crs.to_json()),
                                    "geometry_types": sorted(set(points.geom_type))}}}
    dim = encoder.embed_dim
    schema = pa.schema([(id_column, pa.string()), ("geometry", pa.binary())]
                       + [(f"{EMBED_PREFIX}{j:03d}", pa.float32()) for j in range(dim)],
                       metadata={b"geo": json.dumps(geo).encode(), META_KEY: json.dumps(meta).encode()})
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for ids, pts, emb in _batches(points, cache, encoder, rows_per_group):
                arrays = [pa.array(ids, pa.string()), pa.array(pts.geometry.to_wkb().tolist(), pa.binary())]
                arrays += [pa.array(emb[:, j]) for j in range(dim)]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    return meta


def read_embeddings(path: str | Path):
    """Read an embedding GeoParquet back, with the writer's metadata in ``.attrs['ecoalign']``."""
    import geopandas as gpd
    import pyarrow.parquet as pq

    gdf = gpd.read_parquet(path)
    raw = pq.read_schema(path).metadata or {}
    gdf.attrs["ecoalign"] = json.loads(raw[META_KEY]) if META_KEY in raw else {}
    return gdf


def embedding_columns(df) -> list[str]:
    return [c for c in df.columns if str(c).startswith(EMBED_PREFIX)]
