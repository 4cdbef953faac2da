"""A generated demo world: an orthophoto, relevé plots and their species, with a known ecology behind them.

Why it exists: aligning an aerial-image encoder with botanical relevés needs imagery, plot polygons and
relevé tables in the formats real data come in (GeoTIFF, GeoPackage, CSV), and it needs a signal that is
known to be there, so that the whole pipeline can be run, tested and demonstrated without downloading
anything. ``generate_demo_world`` writes such a data set in a few seconds, deterministically for a seed.

The ecology behind it, from strongest to subtlest:

* five land covers (forest, grassland, cropland, wetland, scrub) from the argmax of smooth random fields,
  each with its own spectra and texture: the generic signal any image encoder picks up;
* two smooth environmental gradients, ``moisture`` and ``nutrient`` in [0, 1], that drive which species
  grow where within a land cover (Gaussian niches) and leave only a faint trace in the image (wet ground is
  slightly darker with a higher NIR/red ratio; nutrient-rich ground has more tree crowns and bushes and a
  greener NIR): the plant-composition signal a botany-aware alignment has to learn;
* phylogenetic niche conservatism in the plant checklist: members of a genus (Quercus, Pinus, Salix, Festuca,
  Trifolium, Juncus, Ranunculus, Rumex, Erica, Cistus, Lavandula, Thymus) share a main land cover and sit close
  in (moisture, nutrient), so a species' genus says much about where it grows, with documented exceptions
  (``NICHE_EXCEPTIONS``: Salvia, Prunus, Carex, whose members diverge), and many genera with a single member
  (Fagus, Pistacia, Typha, ...). ``species.csv`` carries each species' full taxonomy (genus included), the
  checklist an organism text encoder embeds; ``genus_structure()`` summarises it for evaluation;
* butterflies (presence only) and soil-fauna trophic groups that respond to land cover, the gradients and
  plant richness, for downstream "put the embedding to work" tasks.

Plot-level truth is computed over each plot's 100 m image window, so what the relevé says and what the
image shows refer to the same ground. Besides the files a manifest names, the world carries
``plot_environment.csv``: the true moisture, nutrient and land-cover fractions of every plot, for
evaluation only (a model must never be fed it). ``plant_niches()`` returns the species niches used.

Not for science: the species are real and their taxonomy is right, but their niches, the spectra and every
number here are invented to make a learnable, checkable data set.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage, special

from ecoalign.core.io import sha256_file

__all__ = ["DEMO_BANDS", "DEMO_FILES", "LANDCOVERS", "NICHE_EXCEPTIONS", "generate_demo_world", "genus_structure",
           "plant_niches"]

DEMO_BANDS = {"blue": 0.49, "green": 0.56, "red": 0.665, "nir": 0.842}
"""Band name -> centre wavelength in micrometres, in the order of the bands of ``ortho.tif``."""

LANDCOVERS = ("forest", "grassland", "cropland", "wetland", "scrub")
CRS = "EPSG:32631"
ORIGIN_X, ORIGIN_Y = 560000.0, 4830000.0  # lower-left corner of the raster (UTM 31N, southern France)
WINDOW_M = 100.0  # the image window around a plot centre that downstream code reads
PLOT_SIDE_M = 10.0
MIN_SPACING_M = 60.0  # between plots, and from plots to the edge of the valid imagery
COARSE_M = 20.0  # resolution of the smooth fields before upsampling
STRIP_WAVE = 0.15  # relative amplitude of the wavy nodata-strip boundary
OUTSIDE_OFFSET_M = 500.0  # extra plots this far west of the raster
N_EXTRA = 3  # extra plots outside the raster, and again inside the nodata strip
DEMO_FILES = ("ortho.tif", "plots.gpkg", "releves.csv", "species.csv", "butterflies.csv",
              "butterfly_species.csv", "soil_trophic_groups.csv", "plot_environment.csv")
_FIXED_DATE = "2024-01-01T00:00:00Z"  # GeoPackage timestamps, so the file is reproducible

# --------------------------------------------------------------------------------------------- taxa
# Plants: species, class, order, family, common name, land-cover affinity, moisture and nutrient optimum,
# niche width, maximum cover (%). Optima are Ellenberg-like guesses; the numbers drive the simulation only.
F, G, C, W, S = LANDCOVERS
_PLANTS = [
    ("Quercus robur", "Magnoliopsida", "Fagales", "Fagaceae", "pedunculate oak", {F: 1.0}, .55, .55, .30, 60),
    ("Quercus ilex", "Magnoliopsida", "Fagales", "Fagaceae", "holm oak", {F: 1.0, S: .5}, .20, .30, .25, 60),
    ("Fagus sylvatica", "Magnoliopsida", "Fagales", "Fagaceae", "European beech", {F: 1.0}, .60, .50, .20, 70),
    ("Castanea sativa", "Magnoliopsida", "Fagales", "Fagaceae", "sweet chestnut", {F: 1.0}, .45, .35, .25, 55),
    ("Betula pendula", "Magnoliopsida", "Fagales", "Betulaceae", "silver birch", {F: .8, S: .5}, .40, .20, .30, 40),
    ("Alnus glutinosa", "Magnoliopsida", "Fagales", "Betulaceae", "black alder", {F: 1.0, W: .6}, .85, .70, .20, 60),
    ("Pinus sylvestris", "Pinopsida", "Pinales", "Pinaceae", "Scots pine", {F: 1.0}, .30, .20, .30, 60),
    ("Pinus halepensis", "Pinopsida", "Pinales", "Pinaceae", "Aleppo pine", {F: 1.0, S: .6}, .10, .20, .20, 55),
    ("Abies alba", "Pinopsida", "Pinales", "Pinaceae", "silver fir", {F: 1.0}, .70, .45, .15, 65),
    ("Fraxinus excelsior", "Magnoliopsida", "Lamiales", "Oleaceae", "European ash", {F: 1.0, W: .4}, .70, .75, .25, 45),
    ("Hedera helix", "Magnoliopsida", "Apiales", "Araliaceae", "common ivy", {F: 1.0}, .50, .60, .35, 30),
    ("Urtica dioica", "Magnoliopsida", "Rosales", "Urticaceae", "stinging nettle", {F: .8, C: .6}, .60, .95, .20, 25),
    ("Salix alba", "Magnoliopsida", "Malpighiales", "Salicaceae", "white willow", {W: 1.0, F: .5}, .90, .60, .20, 50),
    ("Rubus ulmifolius", "Magnoliopsida", "Rosales", "Rosaceae", "elmleaf blackberry", {S: 1.0, F: .6}, .45, .65, .30, 35),
    ("Bromus erectus", "Liliopsida", "Poales", "Poaceae", "upright brome", {G: 1.0}, .20, .20, .20, 50),
    ("Dactylis glomerata", "Liliopsida", "Poales", "Poaceae", "cock's-foot", {G: 1.0, C: .4}, .50, .70, .30, 35),
    ("Festuca rubra", "Liliopsida", "Poales", "Poaceae", "red fescue", {G: 1.0}, .50, .40, .35, 40),
    ("Lolium perenne", "Liliopsida", "Poales", "Poaceae", "perennial ryegrass", {C: 1.0, G: .6}, .55, .85, .25, 50),
    ("Arrhenatherum elatius", "Liliopsida", "Poales", "Poaceae", "false oat-grass", {G: 1.0}, .50, .60, .25, 45),
    ("Carex flacca", "Liliopsida", "Poales", "Cyperaceae", "glaucous sedge", {G: .7, W: .6}, .70, .30, .25, 20),
    ("Salvia pratensis", "Magnoliopsida", "Lamiales", "Lamiaceae", "meadow clary", {G: 1.0}, .25, .35, .20, 15),
    ("Plantago lanceolata", "Magnoliopsida", "Lamiales", "Plantaginaceae", "ribwort plantain", {G: 1.0, C: .4}, .45, .50, .35, 15),
    ("Trifolium pratense", "Magnoliopsida", "Fabales", "Fabaceae", "red clover", {G: 1.0, C: .5}, .55, .50, .30, 20),
    ("Lotus corniculatus", "Magnoliopsida", "Fabales", "Fabaceae", "common bird's-foot trefoil", {G: 1.0}, .35, .25, .30, 12),
    ("Achillea millefolium", "Magnoliopsida", "Asterales", "Asteraceae", "yarrow", {G: 1.0}, .35, .45, .35, 10),
    ("Leucanthemum vulgare", "Magnoliopsida", "Asterales", "Asteraceae", "oxeye daisy", {G: 1.0}, .45, .40, .30, 10),
    ("Ranunculus acris", "Magnoliopsida", "Ranunculales", "Ranunculaceae", "meadow buttercup", {G: 1.0, W: .5}, .75, .60, .25, 12),
    ("Rumex acetosa", "Magnoliopsida", "Caryophyllales", "Polygonaceae", "common sorrel", {G: 1.0}, .60, .65, .30, 10),
    ("Daucus carota", "Magnoliopsida", "Apiales", "Apiaceae", "wild carrot", {G: .8, C: .6}, .30, .45, .30, 8),
    ("Triticum aestivum", "Liliopsida", "Poales", "Poaceae", "common wheat", {C: 1.0}, .45, .80, .35, 80),
    ("Papaver rhoeas", "Magnoliopsida", "Ranunculales", "Papaveraceae", "common poppy", {C: 1.0}, .30, .60, .30, 10),
    ("Sinapis arvensis", "Magnoliopsida", "Brassicales", "Brassicaceae", "charlock", {C: 1.0}, .45, .75, .30, 12),
    ("Convolvulus arvensis", "Magnoliopsida", "Solanales", "Convolvulaceae", "field bindweed", {C: 1.0, G: .3}, .35, .60, .35, 10),
    ("Centaurea cyanus", "Magnoliopsida", "Asterales", "Asteraceae", "cornflower", {C: 1.0}, .35, .35, .25, 8),
    ("Olea europaea", "Magnoliopsida", "Lamiales", "Oleaceae", "olive", {C: .8, S: .6}, .15, .35, .25, 40),
    ("Phragmites australis", "Liliopsida", "Poales", "Poaceae", "common reed", {W: 1.0}, .90, .70, .20, 80),
    ("Juncus effusus", "Liliopsida", "Poales", "Juncaceae", "soft rush", {W: 1.0, G: .4}, .80, .45, .25, 35),
    ("Typha latifolia", "Liliopsida", "Poales", "Typhaceae", "bulrush", {W: 1.0}, .95, .80, .15, 60),
    ("Iris pseudacorus", "Liliopsida", "Asparagales", "Iridaceae", "yellow flag", {W: 1.0}, .90, .55, .20, 15),
    ("Lythrum salicaria", "Magnoliopsida", "Myrtales", "Lythraceae", "purple loosestrife", {W: 1.0}, .80, .60, .25, 12),
    ("Mentha aquatica", "Magnoliopsida", "Lamiales", "Lamiaceae", "water mint", {W: 1.0}, .85, .50, .25, 15),
    ("Thymus vulgaris", "Magnoliopsida", "Lamiales", "Lamiaceae", "common thyme", {S: 1.0}, .10, .15, .20, 25),
    ("Salvia rosmarinus", "Magnoliopsida", "Lamiales", "Lamiaceae", "rosemary", {S: 1.0}, .12, .20, .20, 30),
    ("Lavandula latifolia", "Magnoliopsida", "Lamiales", "Lamiaceae", "broad-leaved lavender", {S: 1.0}, .15, .20, .20, 20),
    ("Spartium junceum", "Magnoliopsida", "Fabales", "Fabaceae", "Spanish broom", {S: 1.0}, .30, .35, .25, 35),
    ("Crataegus monogyna", "Magnoliopsida", "Rosales", "Rosaceae", "common hawthorn", {S: 1.0, F: .5}, .50, .55, .30, 30),
    ("Prunus spinosa", "Magnoliopsida", "Rosales", "Rosaceae", "blackthorn", {S: 1.0}, .50, .60, .30, 35),
    ("Arbutus unedo", "Magnoliopsida", "Ericales", "Ericaceae", "strawberry tree", {S: 1.0, F: .4}, .35, .25, .25, 35),
    ("Erica arborea", "Magnoliopsida", "Ericales", "Ericaceae", "tree heath", {S: 1.0}, .40, .15, .25, 40),
    ("Calluna vulgaris", "Magnoliopsida", "Ericales", "Ericaceae", "heather", {S: 1.0, G: .4}, .50, .05, .20, 45),
    ("Pistacia lentiscus", "Magnoliopsida", "Sapindales", "Anacardiaceae", "mastic", {S: 1.0}, .15, .30, .20, 40),
    ("Cistus monspeliensis", "Magnoliopsida", "Malvales", "Cistaceae", "Montpellier cistus", {S: 1.0}, .10, .20, .20, 40),
    # congeners of the species above: each close to its genus (phylogenetic niche conservatism) ...
    ("Quercus pubescens", "Magnoliopsida", "Fagales", "Fagaceae", "downy oak", {F: 1.0, S: .25}, .32, .38, .25, 50),
    ("Pinus pinaster", "Pinopsida", "Pinales", "Pinaceae", "maritime pine", {F: 1.0, S: .3}, .20, .15, .25, 55),
    ("Salix cinerea", "Magnoliopsida", "Malpighiales", "Salicaceae", "grey willow", {W: 1.0, F: .5}, .85, .55, .20, 40),
    ("Festuca ovina", "Liliopsida", "Poales", "Poaceae", "sheep's fescue", {G: 1.0}, .35, .25, .30, 30),
    ("Trifolium repens", "Magnoliopsida", "Fabales", "Fabaceae", "white clover", {G: 1.0, C: .5}, .55, .62, .30, 20),
    ("Juncus inflexus", "Liliopsida", "Poales", "Juncaceae", "hard rush", {W: 1.0, G: .5}, .75, .50, .25, 25),
    ("Ranunculus repens", "Magnoliopsida", "Ranunculales", "Ranunculaceae", "creeping buttercup", {G: 1.0, W: .6}, .70, .68, .25, 15),
    ("Rumex obtusifolius", "Magnoliopsida", "Caryophyllales", "Polygonaceae", "broad-leaved dock", {G: 1.0}, .60, .80, .25, 12),
    ("Erica cinerea", "Magnoliopsida", "Ericales", "Ericaceae", "bell heather", {S: 1.0}, .32, .10, .20, 30),
    ("Cistus albidus", "Magnoliopsida", "Malvales", "Cistaceae", "grey-leaved cistus", {S: 1.0}, .12, .25, .20, 35),
    ("Lavandula stoechas", "Magnoliopsida", "Lamiales", "Lamiaceae", "topped lavender", {S: 1.0}, .12, .15, .20, 20),
    ("Thymus serpyllum", "Magnoliopsida", "Lamiales", "Lamiaceae", "wild thyme", {S: 1.0}, .18, .18, .25, 12),
    # ... and the documented exceptions (see NICHE_EXCEPTIONS): congeners whose niches diverge
    ("Prunus avium", "Magnoliopsida", "Rosales", "Rosaceae", "wild cherry", {F: 1.0}, .55, .60, .25, 30),
    ("Carex acutiformis", "Liliopsida", "Poales", "Cyperaceae", "lesser pond-sedge", {W: 1.0}, .90, .65, .20, 40),
]
# Genera whose members do not share a niche (Salvia: meadow clary vs rosemary, Rosmarinus until 2017; Prunus:
# forest cherry vs scrub blackthorn; Carex: calcareous-grassland sedge vs fen sedge). Every other genus with more
# than one member has members close in niche (``genus_structure``: nearest-congener distance below the
# 10th percentile of distances between species of different genera) and the same main land cover.
NICHE_EXCEPTIONS = ("Salvia", "Prunus", "Carex")
OFF_COVER_AFFINITY = 0.01  # a species now and then strays outside its land covers

# Butterflies: species, family, common name, land-cover effects (logit), moisture and nutrient slopes.
_BUTTERFLIES = [
    ("Maniola jurtina", "Nymphalidae", "meadow brown", {G: 2.0, S: 1.0}, 0.0, -0.5),
    ("Melanargia galathea", "Nymphalidae", "marbled white", {G: 2.0}, -1.5, -1.0),
    ("Pararge aegeria", "Nymphalidae", "speckled wood", {F: 2.5}, 1.0, 0.0),
    ("Aglais io", "Nymphalidae", "peacock", {C: 1.0, F: 1.0}, 0.5, 2.5),
    ("Pyronia tithonus", "Nymphalidae", "gatekeeper", {S: 2.0, F: 0.5}, 0.0, 0.0),
    ("Coenonympha pamphilus", "Nymphalidae", "small heath", {G: 2.0}, -0.5, -1.0),
    ("Polyommatus icarus", "Lycaenidae", "common blue", {G: 2.0}, 0.0, -1.5),
    ("Lycaena phlaeas", "Lycaenidae", "small copper", {G: 1.0, S: 1.5}, -1.0, 0.0),
    ("Pieris rapae", "Pieridae", "small white", {C: 2.5}, 0.0, 1.5),
    ("Gonepteryx rhamni", "Pieridae", "brimstone", {F: 1.5, S: 1.5}, 0.5, 0.0),
    ("Colias crocea", "Pieridae", "clouded yellow", {C: 1.5, G: 1.5}, -0.5, 0.0),
    ("Papilio machaon", "Papilionidae", "swallowtail", {W: 1.5, G: 1.0}, 1.0, 0.0),
    ("Iphiclides podalirius", "Papilionidae", "scarce swallowtail", {S: 2.5}, -1.5, 0.0),
]
BUTTERFLY_INTERCEPT = -2.5
BUTTERFLY_RICHNESS_SLOPE = 0.4  # per standard deviation of plant richness

# Soil fauna: log mean abundance, moisture and nutrient slopes, land-cover effects in LANDCOVERS order.
_SOIL_GROUPS = {
    "bacterivores": (3.7, 0.8, 1.0, (0.0, 0.2, 0.3, 0.4, -0.3)),
    "fungivores": (3.0, 0.3, -0.6, (0.6, 0.0, -0.4, -0.2, 0.2)),
    "omnivores": (2.0, 0.4, 0.2, (0.3, 0.3, -0.6, 0.0, 0.0)),
    "predators": (1.5, 0.5, -0.2, (0.4, 0.2, -0.7, 0.1, 0.1)),
    "plant_feeders": (2.8, -0.2, 0.8, (-0.3, 0.5, 0.4, 0.0, -0.2)),
    "detritivores": (2.5, 1.2, 0.3, (0.5, 0.0, -0.3, 0.6, -0.2)),
}
SOIL_DISPERSION = 2.0  # negative-binomial k: soil counts are overdispersed

# ------------------------------------------------------------------------------------------ spectra
# Each pixel mixes a background and a foreground spectrum of its land cover (reflectance, blue..nir); the
# foreground fraction is tree crowns (forest), bushes (scrub, grassland, wetland) or crop greenness.
_SHRUB = (0.030, 0.055, 0.040, 0.300)
_BACKGROUND = np.array([
    (0.020, 0.032, 0.020, 0.170),  # forest: shadow and understorey between crowns
    (0.045, 0.085, 0.060, 0.360),  # grassland: sward
    (0.090, 0.110, 0.140, 0.220),  # cropland: bare soil
    (0.040, 0.065, 0.050, 0.200),  # wetland: wet marsh
    (0.080, 0.100, 0.130, 0.220),  # scrub: dry soil and sparse grass
], dtype=np.float32)
_FOREGROUND = np.array([
    (0.030, 0.060, 0.035, 0.380),  # forest: sunlit crowns
    _SHRUB,  # grassland: scattered bushes
    (0.040, 0.085, 0.050, 0.420),  # cropland: green crop
    _SHRUB,  # wetland: willow and reed clumps
    _SHRUB,  # scrub: shrubs
], dtype=np.float32)
_WATER = np.array((0.060, 0.055, 0.035, 0.020), dtype=np.float32)
POND_THRESHOLD = 1.8  # open water where the pond field exceeds this, in wetlands (~4 %)
# Objects per m^2 at nutrient 0.5: tree crowns (forest) and bushes (others); crops have none.
_CROWN_DENSITY = 0.008
_BUSH_DENSITY = np.array((0.0, 0.002, 0.0, 0.004, 0.012), dtype=np.float32)
_CROWN_SIGMA_M, _BUSH_SIGMA_M = 3.0, 1.5
NUTRIENT_DENSITY = 0.4  # crown and bush density: 1 -/+ this at nutrient 0 and 1
# The faint environmental trace: relative change of reflectance per unit of (gradient - 0.5).
MOISTURE_DARKENING, MOISTURE_RED, MOISTURE_NIR, NUTRIENT_NIR = 0.06, 0.12, 0.08, 0.04
PIXEL_NOISE_REL, PIXEL_NOISE_ABS = 0.03, 0.002


# --------------------------------------------------------------------------------------- public API
def plant_niches() -> pd.DataFrame:
    """The true niche of every plant species (affinity per land cover, optimum, width, maximum cover).

    For evaluation only, like Ellenberg indicator values: a community-weighted mean of ``moisture_opt``
    over a relevé estimates the plot's moisture.
    """
    rows = []
    for name, _, _, _, _, affinity, m_opt, n_opt, width, max_cover in _PLANTS:
        row = {"species": name, "moisture_opt": m_opt, "nutrient_opt": n_opt, "niche_width": width,
               "max_cover": float(max_cover)}
        row.update({f"affinity_{lc}": affinity.get(lc, OFF_COVER_AFFINITY) for lc in LANDCOVERS})
        rows.append(row)
    return pd.DataFrame(rows)


def genus_structure() -> pd.DataFrame:
    """Per species: its genus, the number of species in that genus, whether the genus is a documented niche
    exception, and the niche distance to its nearest congener (None for a genus of one): the structure that
    leave-species-out (zero-shot) validation relies on."""
    n = plant_niches()
    n["genus"] = n["species"].str.split().str[0]
    feats = _niche_features(n)
    rows = []
    for i, (sp, genus) in enumerate(zip(n["species"], n["genus"])):
        mates = np.flatnonzero((n["genus"] == genus).to_numpy() & (np.arange(len(n)) != i))
        dist = float(np.linalg.norm(feats[mates] - feats[i], axis=1).min()) if len(mates) else None
        rows.append({"species": sp, "genus": genus, "genus_size": len(mates) + 1,
                     "niche_exception": genus in NICHE_EXCEPTIONS, "nearest_congener_distance": dist})
    return pd.DataFrame(rows)


def _niche_features(niches: pd.DataFrame) -> np.ndarray:
    """A species' niche as one vector: moisture and nutrient optima and its land-cover affinities (0..1 each)."""
    return niches[["moisture_opt", "nutrient_opt"] + [f"affinity_{lc}" for lc in LANDCOVERS]].to_numpy(float)


def generate_demo_world(root: str | os.PathLike, *, n_plots: int = 400, size_m: float = 4000.0,
                        resolution_m: float = 2.0, seed: int = 0) -> Path:
    """Write the demo world into ``root`` (created) and return it; do nothing if it is already complete.

    Everything is written into a sibling temporary folder first and renamed into place at the end, and
    ``SHA256SUMS`` is written last, so ``root`` either holds a complete world or does not exist: a killed
    generation leaves at most a stray ``.{name}.tmp-<pid>`` folder, which a later call removes once stale.
    """
    root = Path(root).expanduser().absolute()
    if (root / "SHA256SUMS").exists():
        return root
    _check_args(n_plots, size_m, resolution_m)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists but holds no complete demo world (no SHA256SUMS); "
                              "remove it or choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        _write_world(tmp, n_plots=int(n_plots), size_m=float(size_m), resolution_m=float(resolution_m),
                     seed=int(seed))
        _move_into_place(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


# ------------------------------------------------------------------------------------- file handling
def _check_args(n_plots: int, size_m: float, resolution_m: float) -> None:
    if int(n_plots) < 1:
        raise ValueError(f"n_plots must be at least 1, got {n_plots}")
    if not 0 < resolution_m <= 10:
        raise ValueError(f"resolution_m must be in (0, 10] so a {WINDOW_M:g} m window has pixels, got {resolution_m}")
    if size_m < 600:
        raise ValueError(f"size_m must be at least 600 m (plots, margins and the nodata strip), got {size_m}")
    if abs(size_m / resolution_m - round(size_m / resolution_m)) > 1e-6:
        raise ValueError(f"size_m ({size_m}) must be a whole number of pixels of {resolution_m} m")


def _remove_stale_tmp(root: Path, max_age_s: float = 600.0) -> None:
    """Remove temporary folders of killed generations: ours (a reused pid) or any untouched for 10 minutes.

    A younger folder of another pid may belong to a generation running right now, so it is left alone.
    """
    now = time.time()
    for d in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            stale = d.name.endswith(f"-{os.getpid()}") or now - d.stat().st_mtime > max_age_s
            if stale:
                shutil.rmtree(d) if d.is_dir() else d.unlink()
        except OSError:  # another process removed or renamed it meanwhile
            pass


def _move_into_place(tmp: Path, root: Path) -> None:
    """Rename the finished world to ``root``; if a concurrent generation got there first, keep theirs."""
    try:
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        os.replace(tmp, root)
    except OSError:
        if not (root / "SHA256SUMS").exists():
            raise


def _write_checksums(folder: Path, names: list[str]) -> None:
    lines = [f"{sha256_file(folder / n)}  {n}\n" for n in sorted(names)]
    (folder / "SHA256SUMS").write_text("".join(lines))


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, lineterminator="\n")


# --------------------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class _Layout:
    """Where things are: the raster, its nodata strip, and the coarse grid the smooth fields live on."""

    size_m: float
    res: float
    strip_m: float  # mean width of the nodata strip along the eastern edge
    coarse_x0: float  # x of the centre of the first coarse column (reaches west to the outside plots)
    coarse_ytop: float  # y of the centre of the first (northern) coarse row
    coarse_shape: tuple[int, int]

    @classmethod
    def make(cls, size_m: float, res: float) -> "_Layout":
        pad_w = OUTSIDE_OFFSET_M + WINDOW_M + 2 * COARSE_M
        x0, ytop = ORIGIN_X - pad_w, ORIGIN_Y + size_m + COARSE_M
        nx = int(math.ceil((size_m + pad_w + COARSE_M) / COARSE_M)) + 1
        ny = int(math.ceil((size_m + 2 * COARSE_M) / COARSE_M)) + 1
        return cls(size_m, res, max(0.06 * size_m, 150.0), x0, ytop, (ny, nx))

    @property
    def shape(self) -> tuple[int, int]:
        n = int(round(self.size_m / self.res))
        return n, n

    @property
    def east(self) -> float:
        return ORIGIN_X + self.size_m

    def pixel_x(self) -> np.ndarray:
        return ORIGIN_X + (np.arange(self.shape[1]) + 0.5) * self.res

    def pixel_y(self) -> np.ndarray:
        return ORIGIN_Y + self.size_m - (np.arange(self.shape[0]) + 0.5) * self.res


@dataclass
class _Fields:
    """The smooth fields on the coarse grid; bilinear interpolation gives them anywhere, identically."""

    layout: _Layout
    coarse: dict[str, np.ndarray]  # moisture, nutrient (0..1), score_<landcover>, water

    def _coords(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lay = self.layout
        return (lay.coarse_ytop - y) / COARSE_M, (x - lay.coarse_x0) / COARSE_M

    def sample(self, name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Field values at points (any shape)."""
        ty, tx = self._coords(np.asarray(x, float), np.asarray(y, float))
        a = self.coarse[name]
        iy, fy = _lin_index(ty, a.shape[0])
        ix, fx = _lin_index(tx, a.shape[1])
        top = a[iy, ix] * (1 - fx) + a[iy, ix + 1] * fx
        bottom = a[iy + 1, ix] * (1 - fx) + a[iy + 1, ix + 1] * fx
        return top * (1 - fy) + bottom * fy

    def raster(self, name: str) -> np.ndarray:
        """The field on every raster pixel, by separable linear interpolation (two small matrix products)."""
        lay = self.layout
        ty, tx = self._coords(lay.pixel_x(), lay.pixel_y())
        a = self.coarse[name]
        return (_lin_matrix(ty, a.shape[0]) @ a @ _lin_matrix(tx, a.shape[1]).T).astype(np.float32)

    def landcover_raster(self) -> np.ndarray:
        return np.argmax(np.stack([self.raster(f"score_{lc}") for lc in LANDCOVERS]), axis=0).astype(np.uint8)


def _lin_index(t: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour and weight of the right one for linear interpolation at fractional index t (clamped)."""
    t = np.clip(t, 0.0, n - 1.0)
    i = np.minimum(np.floor(t).astype(int), n - 2)
    return i, t - i


def _lin_matrix(t: np.ndarray, n: int) -> np.ndarray:
    i, f = _lin_index(t, n)
    m = np.zeros((len(t), n), dtype=np.float32)
    rows = np.arange(len(t))
    m[rows, i] = 1 - f
    m[rows, i + 1] = f
    return m


def _smooth_normal(rng: np.random.Generator, shape: tuple[int, int], sigma_m: float) -> np.ndarray:
    """Gaussian random field with unit variance and correlation exp(-d^2 / (2 sigma_m)^2)."""
    sigma = sigma_m / COARSE_M
    z = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return z * (2 * sigma * math.sqrt(math.pi))  # the filter's variance is 1 / (4 pi sigma^2)


def _make_fields(rng: np.random.Generator, layout: _Layout) -> _Fields:
    """Moisture and nutrient (correlation ~300 m), land-cover scores (~400 m), a pond field for wetlands.

    Land cover follows the gradients a little (wetlands where wet, cropland on rich soil, scrub where
    dry and poor), as it does in real landscapes, but mostly it is its own random pattern.
    """
    shape = layout.coarse_shape
    m_z, n_z = _smooth_normal(rng, shape, 150.0), _smooth_normal(rng, shape, 150.0)
    # ~400 m patches with ragged (~80 m) edges
    lc_z = [_smooth_normal(rng, shape, 200.0) + 0.3 * _smooth_normal(rng, shape, 40.0) for _ in LANDCOVERS]
    coupling = {"forest": 0.2, "grassland": 0.1, "cropland": 0.5 * n_z, "wetland": -0.3 + 0.9 * m_z,
                "scrub": -0.5 * m_z - 0.3 * n_z}
    coarse = {"moisture": special.ndtr(m_z), "nutrient": special.ndtr(n_z),
              "water": _smooth_normal(rng, shape, 30.0)}
    for lc, z in zip(LANDCOVERS, lc_z):
        coarse[f"score_{lc}"] = z + coupling[lc]
    return _Fields(layout, {k: np.asarray(v, dtype=np.float32) for k, v in coarse.items()})


# ------------------------------------------------------------------------------------------- image
def _render_ortho(rng: np.random.Generator, fields: _Fields) -> np.ndarray:
    """(4, H, W) uint16 reflectance x 10000: land-cover spectra and texture, the faint gradient trace, noise."""
    lay = fields.layout
    lc = fields.landcover_raster()
    moist, nutr = fields.raster("moisture") - 0.5, fields.raster("nutrient") - 0.5
    fg = _foreground_fraction(rng, lay, lc, nutr)
    water = (lc == LANDCOVERS.index("wetland")) & (fields.raster("water") > POND_THRESHOLD)
    bands = []
    for b, name in enumerate(DEMO_BANDS):
        bg = _BACKGROUND[:, b][lc]
        r = bg + fg * (_FOREGROUND[:, b][lc] - bg)
        r[water] = _WATER[b]
        r *= 1 - MOISTURE_DARKENING * moist
        if name == "red":
            r *= 1 - MOISTURE_RED * moist
        if name == "nir":
            r *= (1 + MOISTURE_NIR * moist) * (1 + NUTRIENT_NIR * nutr)
        r += (PIXEL_NOISE_REL * r + PIXEL_NOISE_ABS) * rng.standard_normal(r.shape, dtype=np.float32)
        bands.append(np.clip(np.rint(r * 10000), 50, 65535).astype(np.uint16))
    img = np.stack(bands)
    img[:, _nodata_mask(rng, lay)] = 0
    return img


def _foreground_fraction(rng: np.random.Generator, lay: _Layout, lc: np.ndarray, nutr: np.ndarray) -> np.ndarray:
    """Per-pixel fraction of crowns (forest), bushes (scrub, grassland, wetland) or green crop (cropland).

    Crowns and bushes are Gaussian blobs dropped at random with a density that rises with nutrient: the
    texture carries the nutrient gradient, faintly.
    """
    forest = lc == LANDCOVERS.index("forest")
    per_pixel = (1.0 + 2 * NUTRIENT_DENSITY * nutr) * lay.res ** 2  # nutr is centred on 0
    u = rng.random(lc.shape, dtype=np.float32)
    crowns = _blobs(u < np.where(forest, _CROWN_DENSITY * per_pixel, 0), _CROWN_SIGMA_M / lay.res)
    bushes = _blobs(u < _BUSH_DENSITY[lc] * per_pixel, _BUSH_SIGMA_M / lay.res)
    fg = np.where(forest, crowns, bushes)
    crop = lc == LANDCOVERS.index("cropland")
    fg[crop] = _crop_greenness(rng, lay, crop, nutr)
    return fg


def _blobs(seeds: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blobs of peak ~1 at the seed pixels, overlaps clipped to 1."""
    field = ndimage.gaussian_filter(seeds.astype(np.float32), sigma_px, mode="constant")
    return np.minimum(field * (2 * math.pi * sigma_px ** 2), 1.0)


def _crop_greenness(rng: np.random.Generator, lay: _Layout, crop: np.ndarray, nutr: np.ndarray) -> np.ndarray:
    """Green fraction of cropland pixels: rectangular parcels, each with its crop stage and row direction."""
    parcel, n_parcels = _parcels(rng, lay)
    stage = rng.uniform(-0.15, 0.15, n_parcels)
    angle = rng.choice([0.0, 0.5 * math.pi], n_parcels) + rng.normal(0, 0.05, n_parcels)
    period = max(4 * lay.res, 10.0)
    rows, cols = np.nonzero(crop)
    pid = parcel[rows, cols]
    x, y = (cols + 0.5) * lay.res, (rows + 0.5) * lay.res
    stripes = np.sin(2 * math.pi * (x * np.cos(angle[pid]) + y * np.sin(angle[pid])) / period)
    green = 0.55 + 0.25 * nutr[rows, cols] + stage[pid] + 0.12 * stripes
    return np.clip(green, 0.0, 1.0).astype(np.float32)


def _parcels(rng: np.random.Generator, lay: _Layout) -> tuple[np.ndarray, int]:
    """Parcel id of every pixel: bands of random height, cut into fields of random width."""
    h, w = lay.shape
    parcel = np.empty((h, w), dtype=np.int32)
    next_id, row = 0, 0
    while row < h:
        height = int(rng.uniform(80, 220) / lay.res) + 1
        edges = np.cumsum(rng.uniform(60, 260, int(lay.size_m / 60) + 2)) / lay.res
        col_ids = np.searchsorted(edges, np.arange(w) + 0.5)
        parcel[row:row + height] = next_id + col_ids[None, :]
        next_id += len(edges) + 1
        row += height
    return parcel, next_id


def _strip_boundary(lay: _Layout, y: np.ndarray, phase: float) -> np.ndarray:
    """x of the western edge of the nodata strip: a wave around strip_m from the eastern edge."""
    return lay.east - lay.strip_m * (1 + STRIP_WAVE * np.sin(2 * math.pi * y / 600.0 + phase))


def _nodata_mask(rng: np.random.Generator, lay: _Layout) -> np.ndarray:
    """The eastern mosaic edge: pixels east of a wavy boundary hold no data."""
    boundary = _strip_boundary(lay, lay.pixel_y(), rng.uniform(0, 2 * math.pi))
    return lay.pixel_x()[None, :] >= boundary[:, None]


def _write_ortho(img: np.ndarray, path: Path, lay: _Layout) -> None:
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=img.shape[2], height=img.shape[1], count=img.shape[0], dtype="uint16",
                   crs=CRS, transform=from_origin(ORIGIN_X, ORIGIN_Y + lay.size_m, lay.res, lay.res), nodata=0,
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate", predictor=2)
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(path, "w", **profile) as dst:
        dst.write(img)
        for i, (name, wl) in enumerate(DEMO_BANDS.items(), start=1):
            dst.set_band_description(i, name)
            dst.update_tags(i, wavelength_um=str(wl))
        dst.update_tags(generator="ecoalign demo world", units="reflectance x 10000")


# ------------------------------------------------------------------------------------------- plots
def _place_plots(rng: np.random.Generator, lay: _Layout, n_plots: int) -> np.ndarray:
    """(n_plots + 6, 2) plot centres: random ones at least MIN_SPACING_M apart on valid imagery, then three
    west of the raster and three inside the nodata strip, to exercise downstream skip counting."""
    lo = np.array([ORIGIN_X, ORIGIN_Y]) + MIN_SPACING_M
    hi = np.array([lay.east - lay.strip_m * (1 + STRIP_WAVE), ORIGIN_Y + lay.size_m]) - MIN_SPACING_M
    centres = np.empty((n_plots, 2))
    placed, misses = 0, 0
    while placed < n_plots:
        c = rng.uniform(lo, hi)
        if placed and np.hypot(*(centres[:placed] - c).T).min() < MIN_SPACING_M:
            misses += 1
            if misses > 5000:  # the area is as good as full
                raise ValueError(f"cannot place {n_plots} plots {MIN_SPACING_M:g} m apart in a {lay.size_m:g} m "
                                 f"world (placed {placed}); ask for fewer plots or a larger world")
            continue
        centres[placed], placed, misses = c, placed + 1, 0
    ys = ORIGIN_Y + lay.size_m * np.array([0.3, 0.5, 0.7])
    outside = np.column_stack([np.full(N_EXTRA, ORIGIN_X - OUTSIDE_OFFSET_M), ys])
    # the strip is at least strip_m * (1 - STRIP_WAVE) wide: a window centred here is all nodata or outside
    in_strip = np.column_stack([np.full(N_EXTRA, lay.east - 0.5 * lay.strip_m * (1 - STRIP_WAVE)), ys])
    return np.round(np.vstack([centres, outside, in_strip]), 1)


def _plot_environment(fields: _Fields, centres: np.ndarray, n_plots: int) -> pd.DataFrame:
    """Moisture, nutrient and land-cover fractions averaged over each plot's 100 m window (10 x 10 points)."""
    offsets = (np.arange(10) - 4.5) * (WINDOW_M / 10)
    dx, dy = np.meshgrid(offsets, offsets)
    xs, ys = centres[:, :1] + dx.ravel(), centres[:, 1:] + dy.ravel()
    scores = np.stack([fields.sample(f"score_{lc}", xs, ys) for lc in LANDCOVERS])
    frac = np.stack([(scores.argmax(0) == k).mean(1) for k in range(len(LANDCOVERS))], axis=1)
    kind = ["regular"] * n_plots + ["outside_raster"] * N_EXTRA + ["nodata_strip"] * N_EXTRA
    env = pd.DataFrame({
        "plot_id": [f"P{i + 1:04d}" for i in range(len(centres))],
        "x": centres[:, 0], "y": centres[:, 1], "kind": kind,
        "landcover": [LANDCOVERS[k] for k in frac.argmax(1)],
        "moisture": fields.sample("moisture", xs, ys).mean(1).round(4),
        "nutrient": fields.sample("nutrient", xs, ys).mean(1).round(4),
    })
    for k, lc in enumerate(LANDCOVERS):
        env[f"frac_{lc}"] = frac[:, k].round(4)
    return env


def _plots_frame(env: pd.DataFrame):
    import geopandas as gpd
    import shapely

    half = PLOT_SIDE_M / 2
    x, y = env["x"].to_numpy(), env["y"].to_numpy()
    geom = shapely.box(x - half, y - half, x + half, y + half)
    return gpd.GeoDataFrame({"plot_id": env["plot_id"], "landcover": env["landcover"]}, geometry=geom, crs=CRS)


def _write_gpkg(gdf, path: Path) -> None:
    """GeoPackage with a fixed timestamp, so the same world gives the same file where GDAL allows it."""
    import pyogrio

    previous = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": _FIXED_DATE})
    try:
        pyogrio.write_dataframe(gdf, path, layer="plots", driver="GPKG")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": previous})


# ----------------------------------------------------------------------------------------- relevés
BRAUN_BLANQUET = (("r", 0.5), ("+", 1.0), ("1", 5.0), ("2", 25.0), ("3", 50.0), ("4", 75.0), ("5", math.inf))
DETECTION_LIMIT = 0.3  # % cover below which a species is not noted


def _expected_cover(env: pd.DataFrame) -> np.ndarray:
    """(plots, species) expected % cover: max_cover * land-cover affinity * Gaussian niche response."""
    niches = plant_niches()
    frac = env[[f"frac_{lc}" for lc in LANDCOVERS]].to_numpy()
    affinity = frac @ niches[[f"affinity_{lc}" for lc in LANDCOVERS]].to_numpy().T
    d2 = ((env["moisture"].to_numpy()[:, None] - niches["moisture_opt"].to_numpy()) ** 2
          + (env["nutrient"].to_numpy()[:, None] - niches["nutrient_opt"].to_numpy()) ** 2)
    niche = np.exp(-d2 / (2 * niches["niche_width"].to_numpy() ** 2))
    return niches["max_cover"].to_numpy() * affinity * niche


def _braun_blanquet(cover: np.ndarray) -> np.ndarray:
    """Percent cover -> class code ('r' for a few individuals, '+' < 1 %, then 1..5)."""
    limits = np.array([u for _, u in BRAUN_BLANQUET])
    codes = np.array([c for c, _ in BRAUN_BLANQUET])
    return codes[np.searchsorted(limits, cover, side="right")]


def _simulate_releves(rng: np.random.Generator, env: pd.DataFrame) -> pd.DataFrame:
    """Observed covers: lognormal error, non-detection (likelier for sparse species), at least 3 species."""
    expected = _expected_cover(env)
    observed = expected * rng.lognormal(0.0, 0.5, expected.shape)
    missed = rng.random(expected.shape) < 0.08 + 0.3 * np.exp(-expected / 2.0)
    observed[missed | (observed < DETECTION_LIMIT)] = 0.0
    for i in np.flatnonzero((observed > 0).sum(1) < 3):  # a relevé always notes a few species
        top = np.argsort(-expected[i], kind="stable")[:3]
        observed[i, top] = np.maximum(observed[i, top], np.maximum(expected[i, top], 0.2))
    rows, cols = np.nonzero(observed)
    species = plant_niches()["species"].to_numpy()
    table = pd.DataFrame({"plot_id": env["plot_id"].to_numpy()[rows], "species": species[cols],
                          "cover": _braun_blanquet(observed[rows, cols])})
    return table.sort_values(["plot_id", "species"], kind="stable").reset_index(drop=True)


def _taxonomy_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    plants = pd.DataFrame([
        {"species": s, "kingdom": "Plantae", "phylum": "Tracheophyta", "class": cls, "order": order,
         "family": family, "genus": s.split()[0], "common_name": common}
        for s, cls, order, family, common, *_ in _PLANTS])
    butterflies = pd.DataFrame([
        {"species": s, "kingdom": "Animalia", "phylum": "Arthropoda", "class": "Insecta", "order": "Lepidoptera",
         "family": family, "genus": s.split()[0], "common_name": common}
        for s, family, common, *_ in _BUTTERFLIES])
    return plants.sort_values("species").reset_index(drop=True), butterflies.sort_values("species").reset_index(drop=True)


# ------------------------------------------------------------------------------------- other taxa
def _simulate_butterflies(rng: np.random.Generator, env: pd.DataFrame, richness: np.ndarray) -> pd.DataFrame:
    """Presence-only records: each species occurs at a plot with a logistic probability of land cover,
    moisture, nutrient and plant richness, and is then recorded 1-3 times within 30 m of the plot centre."""
    lc_idx = env["landcover"].map(LANDCOVERS.index).to_numpy()
    m, n = env["moisture"].to_numpy() - 0.5, env["nutrient"].to_numpy() - 0.5
    r = (richness - richness.mean()) / (richness.std() + 1e-9)
    records = []
    for i in range(len(env)):
        for name, _, _, lc_effect, b_m, b_n in _BUTTERFLIES:
            logit = (BUTTERFLY_INTERCEPT + lc_effect.get(LANDCOVERS[lc_idx[i]], -1.0) + 2 * b_m * m[i]
                     + 2 * b_n * n[i] + BUTTERFLY_RICHNESS_SLOPE * r[i])
            if rng.random() >= special.expit(logit):
                continue
            for _ in range(1 + rng.poisson(0.7) % 3):
                dist, angle = 30.0 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
                records.append((name, env["x"].iat[i] + dist * math.cos(angle),
                                env["y"].iat[i] + dist * math.sin(angle), env["plot_id"].iat[i]))
    df = pd.DataFrame(records, columns=["species", "x", "y", "plot_id"]).round({"x": 1, "y": 1})
    df.insert(0, "record_id", [f"B{i + 1:05d}" for i in range(len(df))])
    return df


def _simulate_soil(rng: np.random.Generator, env: pd.DataFrame) -> pd.DataFrame:
    """Negative-binomial abundances, log-linear in moisture, nutrient and land cover, per trophic group."""
    lc_idx = env["landcover"].map(LANDCOVERS.index).to_numpy()
    m, n = env["moisture"].to_numpy() - 0.5, env["nutrient"].to_numpy() - 0.5
    out = pd.DataFrame({"plot_id": env["plot_id"]})
    for group, (b0, b_m, b_n, lc_effect) in _SOIL_GROUPS.items():
        mu = np.exp(b0 + 2 * b_m * m + 2 * b_n * n + np.asarray(lc_effect)[lc_idx])
        out[group] = rng.negative_binomial(SOIL_DISPERSION, SOIL_DISPERSION / (SOIL_DISPERSION + mu))
    return out


# -------------------------------------------------------------------------------------- the recipe
def _write_world(folder: Path, *, n_plots: int, size_m: float, resolution_m: float, seed: int) -> None:
    """Every file of the world; one random stream per part, so changing the plots leaves the image alone."""
    rng_fields, rng_image, rng_plots, rng_releves, rng_fauna = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    layout = _Layout.make(size_m, resolution_m)
    fields = _make_fields(rng_fields, layout)
    _write_ortho(_render_ortho(rng_image, fields), folder / "ortho.tif", layout)

    env = _plot_environment(fields, _place_plots(rng_plots, layout, n_plots), n_plots)
    _write_gpkg(_plots_frame(env), folder / "plots.gpkg")
    releves = _simulate_releves(rng_releves, env)
    _write_csv(releves, folder / "releves.csv")
    plants, butterflies = _taxonomy_tables()
    _write_csv(plants, folder / "species.csv")
    _write_csv(butterflies, folder / "butterfly_species.csv")

    richness = releves.groupby("plot_id").size().reindex(env["plot_id"]).to_numpy(dtype=float)
    _write_csv(_simulate_butterflies(rng_fauna, env, richness), folder / "butterflies.csv")
    _write_csv(_simulate_soil(rng_fauna, env), folder / "soil_trophic_groups.csv")
    _write_csv(env, folder / "plot_environment.csv")
    _write_checksums(folder, list(DEMO_FILES))
