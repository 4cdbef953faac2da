"""Encoders by name or run directory: ``load_encoder("dofa")``, ``load_encoder("runs/adapt/<run>")``, an organism
CLIP model. Every encoder returned is an ``ecoalign.encoders.base.Encoder``; the DOFA ones (frozen or adapted) are
also ``WindowEncoder``s of raster windows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ecoalign.core.errors import EcoalignInputError
from ecoalign.encoders.base import Encoder
from ecoalign.encoders.dofa import DOFAEncoder, build_dofa, resolve_precision


def _load_adapted(run_dir: Path, precision: str | None = "auto") -> DOFAEncoder:
    import torch

    from ecoalign.core.io import sha256_file
    from ecoalign.encoders.adapter import ImageAdapter

    resolve_precision(precision)  # a bad value fails before the model is built
    meta_path = run_dir / "encoder" / "encoder.json"
    meta = json.loads(meta_path.read_text())
    bb = meta["backbone"]
    weights = meta.get("backbone_weights_source", "none")
    if bb["weights"] != "none" and not bb["weights"].startswith("DOFA") and not Path(weights).exists():
        raise EcoalignInputError("the backbone checkpoint this encoder was trained with is not found", path=weights,
                                 where=str(meta_path), expected=f"a file with sha256 {bb['weights_sha256']}")
    model, info = build_dofa(bb["size"], weights)
    if info.weights_sha256 != bb["weights_sha256"]:
        raise EcoalignInputError(f"backbone weights differ from training (sha256 {info.weights_sha256} vs "
                                 f"{bb['weights_sha256']})", path=meta_path)
    adapter = ImageAdapter(bb["embed_dim"], int(meta["adapter"]["mlp_hidden"]))
    adapter.load_state_dict(torch.load(run_dir / "encoder" / "adapter.pt", map_location="cpu", weights_only=True))
    adapter.eval().requires_grad_(False)
    meta = {**meta, "run_dir": str(run_dir.resolve()), "adapter_sha256": sha256_file(run_dir / "encoder" / "adapter.pt")}
    return DOFAEncoder(model, info, meta["wavelengths_um"], meta["band_mean"], meta["band_std"], adapter,
                       meta.get("patch_size_m"), meta, precision=precision)


ORGANISM_PREFIXES = ("open_clip:", "hf-hub:", "local-dir:", "bioclip")


def is_organism_encoder(name_or_path) -> bool:
    """An open_clip organism model: a ``train-organism`` run/encoder directory or an open_clip model name."""
    path = Path(str(name_or_path))
    return ((path / "organism_encoder.json").exists() or (path / "encoder" / "organism_encoder.json").exists()
            or str(name_or_path).startswith(ORGANISM_PREFIXES))


def configure_encoder(encoder, *, precision: str | None = None, band_mean=None, band_std=None):
    """An encoder object with the precision and band statistics a user asked for (None: keep the encoder's).

    An adapted encoder keeps the statistics it was trained with: other ones are refused. Encoders that are not
    DOFA window encoders (organism CLIP) take neither."""
    if precision is None and band_mean is None and band_std is None:
        return encoder
    if not isinstance(encoder, DOFAEncoder):
        raise EcoalignInputError(f"precision and band statistics apply to DOFA window encoders, not {encoder!r}",
                                 expected="no --precision/--band-mean/--band-std for this encoder")
    if band_mean is not None or band_std is not None:
        if encoder.adapter is not None:
            raise EcoalignInputError("an adapted encoder standardises bands with the statistics of its training "
                                     "imagery (encoder/encoder.json); other band_mean/band_std are refused",
                                     path=encoder.metadata.get("run_dir"), expected="no --band-mean/--band-std")
        encoder = encoder.with_band_stats(band_mean, band_std)
    return encoder.with_precision(precision) if precision is not None else encoder


def load_encoder(name_or_path, *, size: str = "base", weights: str = "none",
                 wavelengths_um: Sequence[float] | None = None, band_mean=None, band_std=None,
                 precision: str | None = None) -> Encoder:
    """``"dofa"`` for frozen DOFA (give wavelengths), the directory of an ``ecoalign adapt`` run, or an organism
    CLIP encoder (a ``train-organism`` run directory, ``open_clip:ARCH`` with ``weights=``, ``bioclip``).

    DOFA encoders take ``precision`` (``auto``: bf16 on CUDA, else fp32; ``fp32``, ``bf16``, ``int8``) and, when
    frozen, fixed band statistics ``band_mean``/``band_std`` (one value per band, in the raster's units)."""
    path = Path(str(name_or_path))
    if (path / "encoder" / "encoder.json").exists():
        return configure_encoder(_load_adapted(path, precision), band_mean=band_mean, band_std=band_std)
    if is_organism_encoder(name_or_path):
        from ecoalign.encoders.organism import load_organism_encoder

        encoder = load_organism_encoder(name_or_path, weights=None if weights == "none" else weights)
        return configure_encoder(encoder, precision=None if precision == "auto" else precision,
                                 band_mean=band_mean, band_std=band_std)
    if str(name_or_path) == "dofa":
        if wavelengths_um is None:
            raise EcoalignInputError("frozen DOFA needs the band wavelengths", expected="wavelengths_um=[...] in µm")
        resolve_precision(precision)  # a bad value fails before the model is built
        model, info = build_dofa(size, weights)
        return DOFAEncoder(model, info, wavelengths_um, band_mean, band_std, precision=precision)
    raise EcoalignInputError(f"unknown encoder '{name_or_path}'",
                             expected="'dofa', an ecoalign adapt run directory (holding encoder/encoder.json), "
                                      "a train-organism run directory, or open_clip:ARCH")
