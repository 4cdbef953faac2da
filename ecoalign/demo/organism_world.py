"""A generated organism world: procedural photos whose visual traits are inherited down a taxonomy tree.

Why: the hierarchy claims of the BioCLIP line (taxonomic text helps on unseen species; replay keeps general
skills) need data where the answer is known and that trains on a CPU in minutes. Every rank adds one
visible trait that all its descendants share, so an unseen species looks like its relatives:

* kingdom - background colour;         * phylum - body shape;              * class - body colour;
* order   - body pattern (stripes...); * family - pattern colour;          * genus - limbs (count, colour);
* species - a small detail (eye-spot colour and position, body proportions).

Images get position, rotation, scale, colour and pixel noise. Names are pseudo-Latin built from shared
syllables (as real names share word pieces), with rank suffixes (-idae/-aceae, -iformes/-ales ...).
Training data are long-tailed over genera (as in iNaturalist-derived sets): with scientific names alone a
rare genus's name is barely trained, while its family, order... are learnt from abundant relatives - the
situation in which BioCLIP's taxonomic text helps. Some species in every genus are held out (``heldout_species``): curate them into ``test_unseen`` with
``ecoalign curate ... --unseen-species <world>/heldout_species.txt``. ``general_pairs`` holds generic
shape/colour scenes with captions, the general image-text data used for replay.
Nothing here is biology: the traits are invented to make a learnable, checkable data set.
"""
from __future__ import annotations

import colorsys
import hashlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecoalign.core.io import atomic_dir
from ecoalign.core.paths import cache_dir
from ecoalign.data.taxonomy import RANKS

log = logging.getLogger(__name__)

WORLD_VERSION = 3
KINGDOMS = ("Animalia", "Plantae", "Fungi", "Protozoa")
_SUFFIX = {  # per rank: (animal-like, plant-like)
    "phylum": ("opoda", "phyta"), "class": ("ia", "opsida"), "order": ("iformes", "ales"),
    "family": ("idae", "aceae"), "genus": ("us", "a"),
}
_SYLLABLES = ("ca", "lo", "mi", "ra", "te", "nu", "pho", "xy", "ber", "dra", "gon", "sti", "vel", "qua", "mor",
              "tha", "ri", "cy", "ple", "zo", "an", "ser", "ul", "cor", "pi", "ven", "ol", "tri")
_BACKGROUNDS = ((196, 178, 140), (150, 190, 140), (160, 150, 175), (140, 175, 200))
_SHAPES = ("ellipse", "diamond", "star", "rect", "triangle", "hexagon", "crescent", "cross")
_SHAPE_NOUN = {"ellipse": "crawler", "diamond": "darter", "star": "star", "rect": "block", "triangle": "spike",
               "hexagon": "comb", "crescent": "moon", "cross": "cross"}
_PATTERNS = ("stripes", "spots", "checker", "rings", "plain", "zigzag")
_PATTERN_ADJ = {"stripes": "striped", "spots": "spotted", "checker": "chequered", "rings": "ringed",
                "plain": "plain", "zigzag": "zigzag"}
_PATTERN_COLOURS = ((20, 20, 20), (245, 245, 235), (200, 30, 30), (30, 60, 200), (240, 200, 20), (120, 40, 160))
_LIMB_COLOURS = ((20, 20, 120), (150, 20, 20), (10, 110, 40), (90, 50, 10), (230, 230, 230), (30, 30, 30))
_COLOUR_WORDS = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "blue", "violet", "magenta", "pink")


@dataclass
class OrganismWorld:
    root: Path
    metadata_csv: Path
    images_dir: Path
    general_pairs: Path
    heldout_species: list[str]
    heldout_file: Path
    n_images: int
    params: dict = field(default_factory=dict)


def _hue_rgb(h: float, s: float = 0.75, v: float = 0.8) -> tuple[int, int, int]:
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _hue_word(h: float) -> str:
    return _COLOUR_WORDS[int((h % 1.0) * len(_COLOUR_WORDS))]


class _Namer:
    """Unique pseudo-Latin names from a shared syllable pool."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.used = rng, set()

    def __call__(self, suffix: str, n_syll=(2, 3), lower=False) -> str:
        while True:
            k = int(self.rng.integers(n_syll[0], n_syll[1] + 1))
            stem = "".join(self.rng.choice(_SYLLABLES, size=k))
            name = (stem + suffix).lower() if lower else (stem + suffix).capitalize()
            if name not in self.used:
                self.used.add(name)
                return name


def _build_tree(rng, n_kingdoms, branching):
    """Species records (ranks + traits) for a balanced tree; traits assigned per node, inherited below."""
    namer = _Namer(rng)
    n_class_total = n_kingdoms * branching[0] * branching[1]
    class_hues = list(rng.permutation(n_class_total) / n_class_total)
    species = []
    for ki in range(n_kingdoms):
        kingdom, plant = KINGDOMS[ki], ki % 2 == 1
        sfx = {r: s[1 if plant else 0] for r, s in _SUFFIX.items()}
        shapes = rng.permutation(_SHAPES)
        for pi in range(branching[0]):
            phylum = namer(sfx["phylum"])
            shape = shapes[pi % len(shapes)]
            for _ in range(branching[1]):
                cls, hue = namer(sfx["class"]), class_hues.pop()
                patterns = rng.permutation(_PATTERNS)
                for oi in range(branching[2]):
                    order, pattern = namer(sfx["order"]), patterns[oi % len(patterns)]
                    pcolours = rng.permutation(len(_PATTERN_COLOURS))
                    for fi in range(branching[3]):
                        family, pcol = namer(sfx["family"]), _PATTERN_COLOURS[pcolours[fi % len(pcolours)]]
                        limb_counts = rng.permutation(np.arange(1, 7))
                        limb_hues = rng.permutation(6) / 6.0
                        for gi in range(branching[4]):
                            genus = namer(sfx["genus"])
                            limbs = int(limb_counts[gi % 6])
                            limb_rgb = _LIMB_COLOURS[int(limb_hues[gi % 6] * 6)]
                            eye_hues = rng.permutation(8) / 8.0
                            for si in range(branching[5]):
                                epithet = namer("", (2, 3), lower=True)
                                species.append({
                                    "kingdom": kingdom, "phylum": phylum, "class": cls, "order": order,
                                    "family": family, "genus": genus, "species": f"{genus} {epithet}",
                                    "traits": {"bg": _BACKGROUNDS[ki % len(_BACKGROUNDS)], "shape": shape,
                                               "hue": hue, "pattern": pattern, "pattern_rgb": pcol,
                                               "limbs": limbs, "limb_rgb": limb_rgb,
                                               "eye_rgb": _hue_rgb(eye_hues[si % 8], 1.0, 1.0),
                                               "eye_angle": float(rng.uniform(0, 2 * math.pi)),
                                               "aspect": float(rng.uniform(0.55, 0.95))},
                                })
    return species


def _shape_polygon(shape: str, n: int = 48) -> np.ndarray:
    """Unit-size outline (radius ~1) of a body shape, as (n, 2) points."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    if shape == "ellipse":
        r = np.ones_like(t)
    elif shape == "diamond":
        r = 1 / (np.abs(np.cos(t)) + np.abs(np.sin(t)))
    elif shape == "star":
        r = 0.65 + 0.35 * np.cos(5 * t)
    elif shape == "rect":
        r = 1 / np.maximum(np.abs(np.cos(t)), np.abs(np.sin(t))) * 0.8
    elif shape == "triangle":
        r = 0.5 / np.cos((t % (2 * math.pi / 3)) - math.pi / 3)
    elif shape == "hexagon":
        r = 0.9 * math.cos(math.pi / 6) / np.cos((t % (math.pi / 3)) - math.pi / 6)
    elif shape == "crescent":
        r = 0.55 + 0.45 * np.abs(np.sin(t))
    else:  # cross
        r = 0.45 + 0.55 * (np.abs(np.cos(2 * t)) ** 8)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pattern in body coordinates (u, v in body radii)."""
    if pattern == "stripes":
        return np.sin(u * 9.0) > 0.2
    if pattern == "spots":
        return (np.sin(u * 7.0) * np.sin(v * 7.0)) > 0.45
    if pattern == "checker":
        return (np.floor(u * 2.2) + np.floor(v * 2.2)) % 2 == 0
    if pattern == "rings":
        return np.sin(np.hypot(u, v) * 11.0) > 0.3
    if pattern == "zigzag":
        return np.sin(v * 8.0 + 2.5 * np.abs(((u * 3) % 2) - 1) * 3) > 0.3
    return np.zeros_like(u, dtype=bool)


def draw_organism(traits: dict, rng: np.random.Generator, px: int = 64):
    """One noisy photo of an organism with the given traits (PIL RGB, px x px)."""
    from PIL import Image, ImageDraw

    S = 2 * px  # draw at 2x, downsample: cheap anti-aliasing
    bg = np.array(traits["bg"], float) + rng.normal(0, 4, 3)
    img = np.clip(bg + rng.normal(0, 9, (S, S, 3)), 0, 255)
    cx, cy = S / 2 + rng.uniform(-0.08, 0.08, 2) * S
    scale = S * 0.27 * rng.uniform(0.85, 1.15)
    rot = rng.uniform(0, 2 * math.pi)
    aspect = traits["aspect"]
    c, s = math.cos(rot), math.sin(rot)

    def to_canvas(pts):  # body coords -> canvas
        x, y = pts[:, 0] * scale, pts[:, 1] * scale * aspect
        return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)

    # limbs first (under the body): genus trait
    limb_img = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(limb_img)
    for i in range(traits["limbs"]):
        a = 2 * math.pi * i / traits["limbs"] + 0.3
        end = to_canvas(np.array([[1.75 * math.cos(a), 1.75 * math.sin(a) / aspect]]))[0]
        d.line([(cx, cy), tuple(end)], fill=tuple(traits["limb_rgb"]) + (255,), width=max(2, S // 18))
        d.ellipse([end[0] - S / 24, end[1] - S / 24, end[0] + S / 24, end[1] + S / 24],
                  fill=tuple(traits["limb_rgb"]) + (255,))
    limb = np.asarray(limb_img, float)
    alpha = limb[..., 3:4] / 255
    img = img * (1 - alpha) + limb[..., :3] * alpha

    mask_img = Image.new("L", (S, S), 0)
    ImageDraw.Draw(mask_img).polygon([tuple(p) for p in to_canvas(_shape_polygon(traits["shape"]))], fill=255)
    body = np.asarray(mask_img, float)[..., None] / 255
    yy, xx = np.mgrid[0:S, 0:S].astype(float)
    dx, dy = xx - cx, yy - cy
    u = (c * dx + s * dy) / scale
    v = (-s * dx + c * dy) / (scale * aspect)
    hue = traits["hue"] + rng.normal(0, 0.015)
    body_rgb = np.array(_hue_rgb(hue, 0.7, rng.uniform(0.7, 0.9)), float)
    pat = _pattern_mask(traits["pattern"], u, v)[..., None]
    colour = np.where(pat, np.array(traits["pattern_rgb"], float), body_rgb)
    img = img * (1 - body) + colour * body
    # species detail: an eye-spot at a species-specific place on the body
    ea = traits["eye_angle"]
    ex, ey = to_canvas(np.array([[0.5 * math.cos(ea), 0.5 * math.sin(ea)]]))[0]
    eye = ((xx - ex) ** 2 + (yy - ey) ** 2) < (S / 16) ** 2
    img[eye] = traits["eye_rgb"]
    img = np.clip(img * rng.uniform(0.85, 1.15) + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img).resize((px, px), Image.BOX)


_GEN_SHAPES = ("circle", "square", "triangle")
_GEN_COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (235, 210, 40),
                "black": (25, 25, 25), "white": (240, 240, 240), "purple": (140, 50, 170), "orange": (240, 140, 30)}


def draw_general_pair(rng: np.random.Generator, px: int = 64):
    """A generic scene (1-3 coloured shapes on a plain background) and its caption."""
    from PIL import Image, ImageDraw

    names = list(_GEN_COLOURS)
    bg_name, fg_name = rng.choice(names, size=2, replace=False)
    shape = str(rng.choice(_GEN_SHAPES))
    count = int(rng.integers(1, 4))
    im = Image.new("RGB", (px, px), _GEN_COLOURS[bg_name])
    d = ImageDraw.Draw(im)
    for _ in range(count):
        r = px * rng.uniform(0.1, 0.16)
        x, y = rng.uniform(r, px - r, 2)
        box = [x - r, y - r, x + r, y + r]
        if shape == "circle":
            d.ellipse(box, fill=_GEN_COLOURS[fg_name])
        elif shape == "square":
            d.rectangle(box, fill=_GEN_COLOURS[fg_name])
        else:
            d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=_GEN_COLOURS[fg_name])
    words = {1: "a", 2: "two", 3: "three"}[count]
    caption = f"{words} {fg_name} {shape}{'s' if count > 1 else ''} on a {bg_name} background"
    return im, caption


def organism_world(out: str | os.PathLike | None = None, *, seed: int = 0, n_kingdoms: int = 2,
                   phyla_per_kingdom: int = 2, classes_per_phylum: int = 2, orders_per_class: int = 2,
                   families_per_order: int = 2, genera_per_family: int = 2, species_per_genus: int = 3,
                   heldout_per_genus: int = 1, images_per_species: int = 6, long_tail: float = 1.0,
                   min_images: int = 2, image_px: int = 64, common_fraction: float = 0.7, n_general_pairs: int = 256,
                   overwrite: bool = False) -> OrganismWorld:
    """Write the world (images, metadata.csv, heldout_species.txt, general/ pairs) into ``out`` and describe it.

    Python face of ``ecoalign organism-world`` (which sets ``seed``, ``images_per_species``, ``image_px``,
    ``overwrite``; the tree's shape is Python-only). Deterministic for its parameters; with ``out=None`` it is
    cached under ``cache_dir()/organism_world``.
    Default size: 2*2*2*2*2*2 = 64 genera x 3 species (1 held out per genus). Held-out species get
    ``images_per_species`` images each; seen species a long tail over genera (Zipf exponent ``long_tail``,
    0 = flat; mean ``images_per_species``, at least ``min_images``): ~1200 images by default.
    """
    params = {k: v for k, v in locals().items() if k not in ("out", "overwrite")}
    params["version"] = WORLD_VERSION
    if not 1 <= n_kingdoms <= len(KINGDOMS):
        raise ValueError(f"n_kingdoms must be 1..{len(KINGDOMS)}")
    if not 0 <= heldout_per_genus < species_per_genus:
        raise ValueError("heldout_per_genus must leave at least one seen species per genus")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(out) if out is not None else cache_dir() / "organism_world" / digest
    done = root / "world.json"
    if done.exists() and not overwrite:
        saved = json.loads(done.read_text())
        if saved.get("params") == params:
            return _describe(root, saved)
        raise FileExistsError(f"{root} holds an organism world with other parameters; pass overwrite=True")
    log.info("generating the organism world into %s", root)
    with atomic_dir(root) as tmp:  # replaces an old world (overwrite) or a previous partial run
        saved = _write_world(tmp, params)
    return _describe(root, saved)


generate_organism_world = organism_world  # the earlier name


def _describe(root: Path, saved: dict) -> OrganismWorld:
    return OrganismWorld(root=root, metadata_csv=root / "metadata.csv", images_dir=root / "images",
                         general_pairs=root / "general", heldout_species=list(saved["heldout_species"]),
                         heldout_file=root / "heldout_species.txt", n_images=saved["n_images"],
                         params=saved["params"])


def _write_world(out: Path, params: dict) -> dict:
    import pandas as pd

    from ecoalign.organism.shards import write_shards

    rng = np.random.default_rng(params["seed"])
    branching = (params["phyla_per_kingdom"], params["classes_per_phylum"], params["orders_per_class"],
                 params["families_per_order"], params["genera_per_family"], params["species_per_genus"])
    species = _build_tree(rng, params["n_kingdoms"], branching)
    heldout = []
    by_genus: dict[str, list[dict]] = {}
    for sp in species:
        by_genus.setdefault(sp["genus"], []).append(sp)
    for members in by_genus.values():
        for j in rng.choice(len(members), size=params["heldout_per_genus"], replace=False):
            heldout.append(members[int(j)]["species"])
    # Long tail over genera for the seen species (Zipf weights, mean 1); held-out species get a flat count,
    # like a balanced rare-species benchmark set against a long-tailed training set.
    genera = list(by_genus)
    ranks_ = rng.permutation(len(genera))
    weights = (ranks_ + 1.0) ** -params["long_tail"]
    weights = dict(zip(genera, weights / weights.mean()))
    heldout_set = set(heldout)
    (out / "images").mkdir(parents=True)
    rows = []
    px = params["image_px"]
    for si, sp in enumerate(species):
        t = sp["traits"]
        n_images = params["images_per_species"]
        if sp["species"] not in heldout_set:
            n_images = max(params["min_images"], int(round(n_images * weights[sp["genus"]])))
        common = None
        if rng.random() < params["common_fraction"]:
            common = (f"{_PATTERN_ADJ[t['pattern']]} {_hue_word(t['hue'])} "
                      f"{_SHAPE_NOUN[t['shape']]} with {t['limbs']} limbs")
        for i in range(n_images):
            name = f"sp{si:04d}_{i:02d}.jpg"
            draw_organism(t, rng, px).save(out / "images" / name, quality=92)
            rows.append({"path": f"images/{name}", **{r: sp[r] for r in RANKS},
                         "common_name": common})
    pd.DataFrame(rows).to_csv(out / "metadata.csv", index=False)
    (out / "heldout_species.txt").write_text("\n".join(sorted(heldout)) + "\n")

    def general_records():
        g_rng = np.random.default_rng(params["seed"] + 1)
        for i in range(params["n_general_pairs"]):
            im, caption = draw_general_pair(g_rng, px)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=92)
            yield {"__key__": f"general{i:05d}", "jpg": buf.getvalue(), "txt": caption.encode()}

    write_shards(general_records(), out / "general", shard_size=1000, prefix="general")
    saved = {"params": params, "heldout_species": sorted(heldout), "n_images": len(rows),
             "n_species": len(species), "n_genera": len(by_genus)}
    (out / "world.json").write_text(json.dumps(saved, indent=2))
    return saved
