"""Where a map's encoder and model come from: the user's encoder argument in the main process, or the plan's
sources in a worker process (built once per process and kept)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ecoalign.core.errors import EcoalignInputError
from ecoalign.encoders.base import Encoder
from ecoalign.encoders.registry import configure_encoder, load_encoder
from ecoalign.mapping.plan import MapPlan

_PROCESS_CACHE: dict[str, object] = {}


def resolve_encoder(encoder, wavelengths_um: Sequence[float] | None = None, bundle=None,
                    weights: str | None = None, *, precision: str | None = None, band_mean=None,
                    band_std=None) -> Encoder:
    """An encoder object from an object, an adapt run directory, or ``dofa``/``dofa-small``/``dofa-base``; frozen
    DOFA takes its size, weights, wavelengths and band statistics from the bundle's encoder unless given.
    ``precision``, ``band_mean``/``band_std``: see ``ecoalign.encoders.registry.configure_encoder`` (None keeps)."""
    if not isinstance(encoder, (str, Path)):
        return configure_encoder(encoder, precision=precision, band_mean=band_mean, band_std=band_std)
    name = str(encoder)
    if not name.startswith("dofa") or Path(name).exists():
        return load_encoder(encoder, precision=precision, band_mean=band_mean, band_std=band_std)
    trained = {}
    if bundle is not None:
        from ecoalign.sdm.fitting import read_bundle_meta

        trained = read_bundle_meta(bundle).get("encoder") or {}
    backbone = trained.get("backbone", {})
    size = name.partition("-")[2] or backbone.get("size") or "base"
    if weights is None:
        label = str(backbone.get("weights") or "none")
        if label != "none" and not label.startswith("DOFA"):
            raise EcoalignInputError(f"the model's embeddings came from DOFA with the checkpoint file '{label}'",
                                     path=bundle, expected="--weights /path/to/that checkpoint")
        weights = label.rsplit(".", 1)[-1]
    wavelengths_um = wavelengths_um or trained.get("wavelengths_um")
    same_bands = list(wavelengths_um or []) == list(trained.get("wavelengths_um") or [])
    if band_mean is None and band_std is None and same_bands:
        band_mean, band_std = trained.get("band_mean"), trained.get("band_std")  # those `embed` fixed for `fit`
    return load_encoder("dofa", size=size, weights=weights, wavelengths_um=wavelengths_um, band_mean=band_mean,
                        band_std=band_std, precision=precision)


def cached(key: str, build):
    """``build()`` once per process under ``key``."""
    if key not in _PROCESS_CACHE:
        _PROCESS_CACHE[key] = build()
    return _PROCESS_CACHE[key]


def encoder_from_plan(plan: MapPlan) -> Encoder:
    """The plan's encoder rebuilt from ``plan.encoder_source`` (cached per process), checked against its identity."""
    src = plan.encoder_source
    if src is None:
        raise EcoalignInputError("this encoder cannot be rebuilt in a worker process (loaded from a checkpoint file)",
                                 expected="an adapt run directory or 'dofa' with torchgeo weights, or the single-process path")

    def build():
        if "run_dir" in src:
            enc = load_encoder(src["run_dir"], precision=src.get("precision"))
        else:
            enc = load_encoder("dofa", size=src["size"], weights=src["weights"], wavelengths_um=src["wavelengths_um"],
                               band_mean=src["band_mean"], band_std=src["band_std"], precision=src.get("precision"))
        if plan.encoder_identity is not None and enc.identity() != plan.encoder_identity:
            raise EcoalignInputError("the encoder rebuilt in this worker differs from the one planned",
                                     expected=json.dumps(plan.encoder_identity)[:200])
        return enc

    return cached("encoder:" + json.dumps(src, sort_keys=True), build)


def model_from_plan(plan: MapPlan):
    """The fitted model of the plan's bundle (cached per process, keyed on the model file's content: a long-lived
    worker must not serve a bundle re-fitted into the same folder), or the zero-shot model the plan carries."""
    from ecoalign.sdm.bundle_io import bundle_hash
    from ecoalign.sdm.fitting import load_bundle

    if plan.extra.get("zero_shot"):
        from ecoalign.aerial.zero_shot import ZeroShotModel

        spec = plan.extra["zero_shot"]
        return cached("zero_shot:" + json.dumps(spec, sort_keys=True), lambda: ZeroShotModel.from_spec(spec))

    model_sha = bundle_hash(plan.bundle)
    trusted = plan.extra.get("trusted", ())
    return cached(f"model:{Path(plan.bundle).resolve()}:{model_sha}",
                  lambda: load_bundle(plan.bundle, trusted=trusted)[0])
