"""``ecoalign embed``: any window encoder + points + raster(s) -> one row per point with its embedding.

``embed`` takes the verb's arguments (points or a manifest, rasters, encoder name or run, ...); ``embed_points``
and ``write_embeddings`` take loaded points and an encoder object. Windows are read and embedded in batches
through the resumable backbone cache, so a killed job resumes and a repeated one is free; ``write_embeddings``
writes the table to GeoParquet row group by row group (memory stays flat as the number of points grows), with the
encoder's identity in the file metadata.

Band statistics: the encoder's fixed ones (an adapted encoder's, or ``band_mean``/``band_std`` given for frozen
DOFA). Frozen DOFA without them gets them fixed once from all the rasters of this call (a decimated read of their
valid pixels), recorded in the table's encoder identity with the rasters they came from; ``fit`` keeps that
identity in the bundle and ``map`` reuses the statistics, so a map agrees with the embeddings its model was fitted on.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import atomic_path
from ecoalign.encoders.base import WindowEncoder

log = logging.getLogger(__name__)

EMBED_PREFIX = "emb_"
META_KEY = b"ecoalign"


def embed_inputs(points=None, rasters: Sequence[str | Path] = (), *, manifest=None, encoder="dofa",
                 weights: str = "none", size: str = "base", wavelengths_um: Sequence[float] | None = None,
                 id_column: str = "plot_id", crs=None, precision: str | None = None, band_mean=None,
                 band_std=None) -> tuple[object, list, WindowEncoder, str]:
    """(points, rasters, encoder, id column) from ``ecoalign embed``'s arguments.

    ``points``: a GeoDataFrame or a plots file (GeoPackage, GeoParquet, CSV with ``crs``); without it, the
    ``manifest``'s plots (ids in ``plot_id``). ``rasters`` (one GeoTIFF or a list) default to the manifest's
    imagery, ``wavelengths_um`` to its band wavelengths. ``encoder``: an encoder object, ``dofa`` (with ``size``,
    ``weights``, wavelengths) or an ``ecoalign adapt`` run directory; ``precision`` (auto, fp32, bf16, int8) and
    fixed ``band_mean``/``band_std`` (frozen DOFA) configure it."""
    from ecoalign.data.plots import read_plots

    rasters = [str(rasters)] if isinstance(rasters, (str, Path)) else [str(r) for r in rasters or []]
    table = None
    if manifest is not None:
        from ecoalign.data.manifest import Manifest, load_manifest
        from ecoalign.data.plots import read_manifest_plots

        m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        rasters = rasters or [str(f.path) for f in m.imagery]
        wavelengths_um = wavelengths_um or list(m.wavelengths_um)
        if points is None:
            table, id_column = read_manifest_plots(m), "plot_id"
    if isinstance(points, (str, Path)):
        table = read_plots(points, id_column=id_column, crs=crs)
    elif points is not None:
        table = points if points.crs is not None or crs is None else points.set_crs(crs)
    if table is None:
        raise EcoalignInputError("no points given", expected="--points FILE or --manifest M")
    from ecoalign.encoders.registry import configure_encoder, load_encoder

    if isinstance(encoder, (str, Path)):
        encoder = load_encoder(encoder, size=size, weights=weights, wavelengths_um=wavelengths_um,
                               precision=precision, band_mean=band_mean, band_std=band_std)
    else:
        encoder = configure_encoder(encoder, precision=precision, band_mean=band_mean, band_std=band_std)
    return table, rasters, encoder, id_column


def embed(points=None, rasters: Sequence[str | Path] = (), *, manifest=None, encoder="dofa", weights: str = "none",
          size: str = "base", wavelengths_um: Sequence[float] | None = None, id_column: str = "plot_id", crs=None,
          patch_size_m: float | None = None, batch_size: int = 16, out: str | Path | None = None,
          overwrite: bool = False, max_nodata_fraction: float = 0.5, progress: bool = False,
          precision: str | None = None, band_mean=None, band_std=None):
    """Python face of ``ecoalign embed``, with the verb's arguments (see ``embed_inputs``): a GeoDataFrame
    (id, emb_000.., geometry) of the points that have a usable window, metadata and skips in ``.attrs['ecoalign']``.

    With ``out``, the table is also written to GeoParquet (the file ``ecoalign embed --out`` writes, refused when it
    exists unless ``overwrite``) and the table returned is that file read back."""
    table, rasters, enc, id_column = embed_inputs(points, rasters, manifest=manifest, encoder=encoder,
                                                  weights=weights, size=size, wavelengths_um=wavelengths_um,
                                                  id_column=id_column, crs=crs, precision=precision,
                                                  band_mean=band_mean, band_std=band_std)
    options = {"id_column": id_column, "patch_size_m": patch_size_m, "max_nodata_fraction": max_nodata_fraction,
               "batch_size": batch_size, "progress": progress}
    if out is None:
        return embed_points(table, rasters, enc, **options)
    write_embeddings(table, rasters, enc, out, overwrite=overwrite, **options)
    written = read_embeddings(out)
    result = written[[id_column, *embedding_columns(written), "geometry"]]  # the column order of embed_points
    result.attrs = written.attrs
    return result


def _file_fingerprint(path: Path) -> dict:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sources(rasters, wavelengths_um):
    """(the rasters, the sources to read windows from). A glob (``tiles/*.tif``) gives its tiles. Several rasters
    in one CRS, with the same bands, resolution and pixel grid are tiles of one mosaic, read through a VRT
    (``ecoalign.data.mosaic``) so that windows across tile edges are whole; others are read one by one (a window
    from the first raster holding its centre). Band statistics and cache keys always come from the rasters."""
    from ecoalign.data.mosaic import check_tiles, expand_tiles, is_glob, resolve_raster
    from ecoalign.data.patches import open_rasters

    rasters = [rasters] if isinstance(rasters, (str, Path)) else list(rasters)
    paths = [p for r in rasters for p in expand_tiles(r, "--raster")]
    sources = open_rasters(paths, wavelengths_um)
    if len(paths) < 2:
        return sources, sources
    try:
        check_tiles(paths)
    except EcoalignInputError as exc:
        if any(is_glob(str(r)) for r in rasters):  # a glob means tiles of one mosaic
            raise
        log.info("the %d rasters are read one by one, not as a mosaic (%s)", len(paths), exc)
        return sources, sources
    vrt, _ = resolve_raster(paths, "--raster")
    return sources, open_rasters([vrt], wavelengths_um)


def _prepare(points, rasters: Sequence[str | Path], encoder, *, patch_size_m: float | None,
             max_nodata_fraction: float, batch_size: int, id_column: str, progress: bool):
    from ecoalign.aerial.backbone_cache import build_backbone_cache
    from ecoalign.core.paths import cache_dir
    from ecoalign.data.patches import PatchReader, band_stats
    from ecoalign.data.plots import plot_centres, read_plots

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
    if not isinstance(encoder, WindowEncoder):
        raise EcoalignInputError(f"{encoder!r} does not embed multispectral raster windows",
                                 expected="an image-window encoder: 'dofa' or an `ecoalign adapt` run directory "
                                          "(organism photos: `ecoalign embed-images`)")
    sources, read_sources = _sources(rasters, encoder.wavelengths_um)
    stats_from = None
    if encoder.band_mean is None:  # fixed once, from all rasters of this call, and recorded (never per raster)
        encoder = encoder.with_band_stats(*band_stats(sources))
        stats_from = [str(s.path) for s in sources]
        log.info("frozen DOFA has no band statistics: fixed from %d raster(s) (mean %s, std %s) and recorded in "
                 "the encoder identity (`fit` keeps them, `map` reuses them); pass band_mean/band_std "
                 "(--band-mean/--band-std) to choose them", len(sources),
                 [round(float(v), 4) for v in encoder.band_mean], [round(float(v), 4) for v in encoder.band_std])
    mean, std = encoder.band_mean, encoder.band_std
    size_m = float(patch_size_m or encoder.patch_size_m or 100.0)
    centres = plot_centres(points, sources[0].crs)
    ids = [str(i) for i in points.index]
    key = {"rasters": [_file_fingerprint(s.path) for s in sources], "patch_size_m": size_m,
           "max_nodata_fraction": max_nodata_fraction, "backbone": encoder.info.as_dict(),
           "mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist(), "input_px": encoder.input_px}
    precision = getattr(encoder, "precision", "fp32")
    if precision != "fp32":  # fp32 keeps the key caches had before precisions existed; bf16/int8 get their own
        key["precision"] = precision
    if precision == "int8":  # caches of another int8 scheme (an earlier one, another machine's) are not this one's
        from ecoalign.encoders.int8 import int8_scheme

        key["int8_scheme"] = int8_scheme()
    if read_sources is not sources:
        key["mosaic"] = True  # windows across tile edges differ from those of separately read rasters
    with PatchReader(read_sources, size_m=size_m, out_px=encoder.input_px, max_nodata_fraction=max_nodata_fraction,
                     mean=mean, std=std) as reader:
        cache = build_backbone_cache(reader=reader, features=encoder.features, plot_ids=ids, centres=centres,
                                     views=["identity"], key_parts=key, cache_root=cache_dir() / "embeddings",
                                     batch_size=batch_size, progress=progress)
    if len(cache.plot_ids) == 0:
        raise EcoalignInputError(
            f"none of the {len(ids)} points has a usable window in the raster(s) "
            f"(skipped: { {k: len(v) for k, v in cache.skipped.items()} })",
            expected="points inside the raster footprint (they are reprojected to the raster CRS)")
    return points, cache, size_m, encoder, stats_from


def _batches(points, cache, encoder, rows: int) -> Iterator[tuple[list[str], object, np.ndarray]]:
    for s in range(0, len(cache.plot_ids), rows):
        ids = list(cache.plot_ids[s:s + rows])
        emb = encoder.head(np.asarray(cache.embeddings[s:s + rows, 0]))
        yield ids, points.loc[ids], np.asarray(emb, dtype=np.float32)


def _metadata(encoder, cache, size_m: float, n_points: int, stats_from: list[str] | None) -> dict:
    meta = {"encoder": encoder.identity(), "random_weights": encoder.random_weights, "patch_size_m": size_m,
            "points": n_points, "embedded": int(len(cache.plot_ids)),
            "skipped": {k: v for k, v in cache.skipped.items()}, "embedding_prefix": EMBED_PREFIX}
    if stats_from:
        meta["band_stats_from"] = stats_from  # the rasters whose statistics were fixed for this frozen encoder
    return meta


def embed_points(points, rasters: Sequence[str | Path], encoder, *, patch_size_m: float | None = None,
                 max_nodata_fraction: float = 0.5, batch_size: int = 16, id_column: str = "plot_id",
                 progress: bool = False, precision: str | None = None, band_mean=None, band_std=None):
    """A GeoDataFrame (id, geometry, emb_000..) of the points that have a usable window; skips in ``.attrs``.
    ``precision`` and ``band_mean``/``band_std`` configure the encoder (None: the encoder's own)."""
    import geopandas as gpd
    import pandas as pd

    from ecoalign.encoders.registry import configure_encoder, load_encoder

    if isinstance(encoder, (str, Path)):
        encoder = load_encoder(encoder)
    encoder = configure_encoder(encoder, precision=precision, band_mean=band_mean, band_std=band_std)
    points, cache, size_m, encoder, stats_from = _prepare(points, rasters, encoder, patch_size_m=patch_size_m,
                                                          max_nodata_fraction=max_nodata_fraction,
                                                          batch_size=batch_size, id_column=id_column,
                                                          progress=progress)
    parts = []
    for ids, pts, emb in _batches(points, cache, encoder, 4096):
        cols = pd.DataFrame(emb, columns=[f"{EMBED_PREFIX}{j:03d}" for j in range(emb.shape[1])], index=pts.index)
        parts.append(pd.concat([pd.DataFrame({id_column: ids}, index=pts.index), cols], axis=1)
                     .assign(geometry=pts.geometry.values))
    out = gpd.GeoDataFrame(pd.concat(parts), geometry="geometry", crs=points.crs).reset_index(drop=True)
    out.attrs["ecoalign"] = _metadata(encoder, cache, size_m, len(points), stats_from)
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
    points, cache, size_m, encoder, stats_from = _prepare(points, rasters, encoder, patch_size_m=patch_size_m,
                                                          max_nodata_fraction=max_nodata_fraction,
                                                          batch_size=batch_size, id_column=id_column,
                                                          progress=progress)
    meta = _metadata(encoder, cache, size_m, len(points), stats_from)
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
    skipped = {k: len(v) for k, v in meta["skipped"].items()}
    log.info("wrote %d of %d points to %s; skipped %s%s", meta["embedded"], meta["points"], out, skipped or "none",
             "; encoder on RANDOM weights" if meta["random_weights"] else "")
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
