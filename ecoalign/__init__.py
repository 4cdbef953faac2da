"""ecoalign: botany-aware remote-sensing and organism foundation models, put to work in ecology.

One public function per CLI verb, with the verb's name and arguments (``ecoalign fit`` -> ``ecoalign.fit``), plus
the loaders a notebook needs. They are imported on first use, so ``import ecoalign`` stays light and heavy
dependencies (torch, torchgeo, rasterio) load only when a function that needs them is called.
"""
from __future__ import annotations

import importlib
import logging

from ecoalign.core.errors import EcoalignInputError

__version__ = "0.1.0"

# the library logs under "ecoalign"; it shows nothing unless the application configures logging (the CLI does)
logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> "module:attribute"; the CLI verb of the same name is a thin parser over each
API = {
    # aerial encoders (BotaCLIP)
    "adapt": "ecoalign.aerial.adapt:adapt",
    "embed": "ecoalign.aerial.embed:embed",
    "embed_points": "ecoalign.aerial.embed:embed_points",
    "evaluate_zero_shot": "ecoalign.sdm.zero_shot_eval:evaluate_zero_shot",
    # species models
    "fit": "ecoalign.sdm.fit:fit",
    "evaluate": "ecoalign.sdm.evaluate:evaluate",
    "compare": "ecoalign.sdm.compare:compare",
    "read_sites": "ecoalign.sdm.sites:read_sites",
    "Bundle": "ecoalign.sdm.fit:Bundle",
    "convert_bundle": "ecoalign.sdm.bundle_io:convert_bundle",
    # maps
    "map": "ecoalign.mapping:map_raster",
    "map_raster": "ecoalign.mapping:map_raster",
    # organism encoders (BioCLIP)
    "curate": "ecoalign.organism.curate:curate",
    "organism_world": "ecoalign.demo.organism_world:organism_world",
    "train_organism": "ecoalign.organism.train:train_organism",
    "zero_shot": "ecoalign.organism.zero_shot:zero_shot",
    "few_shot": "ecoalign.organism.few_shot:few_shot",
    "predict": "ecoalign.organism.predict:predict",
    "intrinsic": "ecoalign.organism.intrinsic:intrinsic",
    "embed_images": "ecoalign.organism.photos:embed_images",
    # loaders
    "load_encoder": "ecoalign.encoders.registry:load_encoder",
    "load_manifest": "ecoalign.data.manifest:load_manifest",
    "load_bundle": "ecoalign.sdm.fit:Bundle.load",
}

__all__ = sorted(API) + ["EcoalignInputError", "__version__"]


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'ecoalign' has no attribute {name!r}")
    module, attr = API[name].split(":")
    value = importlib.import_module(module)
    for part in attr.split("."):
        value = getattr(value, part)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return __all__
