"""Species maps from rasters (``ecoalign map``), one stage per module, each importing only the ones before it:

``plan``        the window grid over a raster, cut into blocks, checked against the encoder and the model
``loading``     the encoder and the model, from the user's arguments or (in a worker) from the plan
``blocks``      one block: one read, the windows' embeddings, the model's predictions
``writer``      the resumable partial GeoTIFF, the final COG, the quicklook PNG
``distributed`` blocks computed by Dask workers
``run``         ``map_raster``: the whole map
"""
from ecoalign.mapping.blocks import (
           compute_block,
           embed_windows,
           predict_block,
           read_block,
)
from ecoalign.mapping.loading import resolve_encoder
from ecoalign.mapping.plan import Block, MapPlan, plan_map, plan_windows, window_centres
from ecoalign.mapping.run import map_raster
from ecoalign.mapping.writer import write_quicklook

__all__ = ["Block", "MapPlan", "compute_block", "embed_windows", "map_raster", "plan_map", "plan_windows",
           "predict_block", "read_block", "resolve_encoder", "window_centres", "write_quicklook"]
