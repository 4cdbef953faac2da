"""ecoalign: botany-aware remote-sensing and organism foundation models, put to work in ecology.

Heavy dependencies (torch, torchgeo, rasterio) load only when a function that needs them is called.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["adapt", "embed_points", "load_encoder", "load_manifest", "map_raster", "EcoalignInputError"]

from ecoalign.core.errors import EcoalignInputError


def adapt(overrides=(), *, out=None, resume=None):
    """Python face of ``ecoalign adapt``: ``ecoalign.adapt(["backbone.size=small"], out="runs/x")``."""
    from ecoalign.core.config import compose
    from ecoalign.aerial.adapt import adapt as _adapt

    return _adapt(compose("adapt", list(overrides)), out=out, resume=resume)


def load_encoder(name_or_path, **kwargs):
    from ecoalign.encoders.registry import load_encoder as _load

    return _load(name_or_path, **kwargs)


def load_manifest(name_or_path, **kwargs):
    from ecoalign.data.manifest import load_manifest as _load

    return _load(name_or_path, **kwargs)


def embed_points(points, rasters, encoder, **kwargs):
    """Python face of ``ecoalign embed``: a GeoDataFrame with one embedding row per usable point."""
    from ecoalign.aerial.embed import embed_points as _embed

    return _embed(points, rasters, encoder, **kwargs)


def map_raster(encoder, model, raster, out, **kwargs):
    """Python face of ``ecoalign map``: a species-model map of a raster of any size -> (Cloud-Optimized) GeoTIFF."""
    from ecoalign.mapping.raster import map_raster as _map

    return _map(encoder, model, raster, out, **kwargs)
