"""What ``train-organism`` makes of one raw shard sample: the image (decoded and augmented) and one caption per
draw, both from an RNG keyed by the sample's stream position, so a resumed run sees exactly the views an
uninterrupted one would.

Organism samples (a ``.json`` sidecar with a taxon) get a text type (fixed, or one drawn per draw for "mixed")
in a random CLIP template; samples without taxonomy (general image-caption pairs) get their ``.txt`` as is, and
so do organism samples with ``text_type="caption"``.
"""
from __future__ import annotations

import json

CAPTION = "caption"  # text type: the plain <key>.txt caption of every sample


def species_caption(texts: dict, taxon, text_type: str, templates: bool, rng, kinds=None) -> str:
    """``kinds``: the text types "mixed" draws from (default all of ``taxonomy.TEXT_TYPES``)."""
    from ecoalign.data.taxonomy import TEMPLATES, TEXT_TYPES, text

    kinds = tuple(kinds or TEXT_TYPES)
    kind = kinds[rng.integers(len(kinds))] if text_type == "mixed" else text_type
    raw = texts.get(kind) or text(taxon, kind)
    tpls = TEMPLATES if templates else ("{}",)
    return tpls[rng.integers(len(tpls))].format(raw)


class SpeciesCaption:
    """Caption of sample ``idx`` of a list of organism samples (dicts with ``texts`` and ``taxon``)."""

    def __init__(self, samples: list[dict], text_type: str, templates: bool):
        self.samples, self.text_type, self.templates = samples, text_type, templates

    def __call__(self, idx: int, rng) -> str:
        s = self.samples[idx]
        return species_caption(s["texts"], s["taxon"], self.text_type, self.templates, rng)


class MakeSample:
    """raw webdataset sample -> (image tensor, caption), or the reason it cannot be used (a string)."""

    def __init__(self, transform, text_type: str, templates: bool, mixed_types=None):
        self.transform, self.text_type, self.templates = transform, text_type, templates
        self.mixed_types = mixed_types

    def caption(self, raw: dict, rng) -> str | None:
        from ecoalign.organism.shards import taxon_of, texts_of

        if self.text_type != CAPTION and "json" in raw:
            meta = json.loads(raw["json"])
            if meta.get("taxon"):
                return species_caption(texts_of(raw), taxon_of(meta), self.text_type, self.templates, rng,
                                       self.mixed_types)
        if raw.get("txt"):
            return raw["txt"].decode()
        return None

    def __call__(self, raw: dict, source: int, rng):
        import torch

        from ecoalign.organism.shards import decode_image, image_of

        data = raw.get("img", image_of(raw)[1])
        if data is None:
            return "no image member (.jpg/.png/.webp)"
        try:
            text = self.caption(raw, rng)
        except (ValueError, UnicodeDecodeError) as exc:
            return f"unreadable text sidecar: {exc}"
        if not text:
            return "no text (no .txt and no taxon in .json)"
        try:
            image = decode_image(data)
        except Exception as exc:  # noqa: BLE001  PIL raises OSError, SyntaxError, ValueError... on broken images
            return f"image does not decode: {exc}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2 ** 31)))
            return self.transform(image), text
