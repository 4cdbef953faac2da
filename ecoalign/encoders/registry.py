"""Encoders by name or run directory: ``load_encoder("dofa")`` or ``load_encoder("runs/adapt/<run>")``.

An encoder turns raw image windows (B, bands, H, W) in the raster's own units into embeddings; it carries
its wavelengths and band standardisation so notebook users do not have to.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError


class DOFAEncoder:
    """Frozen DOFA, optionally followed by a trained adapter; embeds raw windows of a known band set."""

    def __init__(self, model, info, wavelengths_um: Sequence[float], band_mean=None, band_std=None, adapter=None,
                 patch_size_m: float | None = None, metadata: dict | None = None):
        from ecoalign.encoders.dofa import DOFAFeatures

        self.model = model
        self.info = info
        self.wavelengths_um = [float(w) for w in wavelengths_um]
        self.band_mean = None if band_mean is None else np.asarray(band_mean, np.float32)
        self.band_std = None if band_std is None else np.asarray(band_std, np.float32)
        self.adapter = adapter
        self.patch_size_m = patch_size_m
        self.metadata = metadata or {}
        self.features = DOFAFeatures(model, self.wavelengths_um)

    @property
    def embed_dim(self) -> int:
        return self.info.embed_dim

    @property
    def random_weights(self) -> bool:
        return self.info.random_weights

    def _prepare(self, images):
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(np.asarray(images, dtype=np.float32) if not isinstance(images, torch.Tensor) else images)
        x = x.float()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != len(self.wavelengths_um):
            raise EcoalignInputError(f"images of shape {tuple(x.shape)}",
                                     expected=f"(batch, {len(self.wavelengths_um)} bands, H, W) for wavelengths "
                                              f"{self.wavelengths_um}")
        if self.band_mean is not None:
            x = (x - torch.from_numpy(self.band_mean)[None, :, None, None]) / torch.from_numpy(self.band_std)[None, :, None, None]
        if x.shape[-2:] != (self.info.input_px, self.info.input_px):
            x = F.interpolate(x, size=(self.info.input_px,) * 2, mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.info.input_px)
        return x

    def embed(self, images, batch_size: int = 32) -> np.ndarray:
        """Embeddings (B, D) of raw image windows; standardisation and resizing to 224 px included."""
        import torch

        x = self._prepare(images)
        out = []
        with torch.inference_mode():
            for s in range(0, len(x), batch_size):
                f = self.features(x[s:s + batch_size])
                if self.adapter is not None:
                    f = self.adapter(f)
                out.append(f.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def head(self, frozen):
        """The trained part on top of cached frozen features (identity for frozen DOFA)."""
        import torch

        if self.adapter is None:
            return frozen
        with torch.inference_mode():
            return self.adapter(torch.as_tensor(np.array(frozen, dtype=np.float32))).numpy()

    def identity(self) -> dict:
        """What produced an embedding: written into output metadata and used in cache keys."""
        out = {"kind": "adapted_dofa" if self.adapter is not None else "dofa", "backbone": self.info.as_dict(),
               "wavelengths_um": self.wavelengths_um, "embed_dim": self.embed_dim}
        if self.adapter is not None:
            out["adapter_sha256"] = self.metadata.get("adapter_sha256")
            out["run_dir"] = self.metadata.get("run_dir")
        return out

    def __repr__(self) -> str:
        kind = "adapted" if self.adapter is not None else "frozen"
        return (f"DOFAEncoder({kind}, DOFA-{self.info.size}, weights={self.info.weights}"
                f"{' RANDOM' if self.random_weights else ''}, bands={self.wavelengths_um})")


def _load_adapted(run_dir: Path) -> DOFAEncoder:
    import torch

    from ecoalign.encoders.adapter import ImageAdapter
    from ecoalign.encoders.dofa import build_dofa

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
    from ecoalign.core.io import sha256_file

    meta = {**meta, "run_dir": str(run_dir.resolve()), "adapter_sha256": sha256_file(run_dir / "encoder" / "adapter.pt")}
    return DOFAEncoder(model, info, meta["wavelengths_um"], meta["band_mean"], meta["band_std"], adapter,
                       meta.get("patch_size_m"), meta)


ORGANISM_PREFIXES = ("open_clip:", "hf-hub:", "local-dir:", "bioclip")


def is_organism_encoder(name_or_path) -> bool:
    """An open_clip organism model: a ``train-organism`` run/encoder directory or an open_clip model name."""
    path = Path(str(name_or_path))
    return ((path / "organism_encoder.json").exists() or (path / "encoder" / "organism_encoder.json").exists()
            or str(name_or_path).startswith(ORGANISM_PREFIXES))


def load_encoder(name_or_path, *, size: str = "base", weights: str = "none",
                 wavelengths_um: Sequence[float] | None = None, band_mean=None, band_std=None) -> DOFAEncoder:
    """``"dofa"`` for frozen DOFA (give wavelengths), the directory of an ``ecoalign adapt`` run, or an organism
    CLIP encoder (a ``train-organism`` run directory, ``open_clip:ARCH`` with ``weights=``, ``bioclip``)."""
    from ecoalign.encoders.dofa import build_dofa

    path = Path(str(name_or_path))
    if (path / "encoder" / "encoder.json").exists():
        return _load_adapted(path)
    if is_organism_encoder(name_or_path):
        from ecoalign.encoders.organism import load_organism_encoder

        return load_organism_encoder(name_or_path, weights=None if weights == "none" else weights)
    if str(name_or_path) == "dofa":
        if wavelengths_um is None:
            raise EcoalignInputError("frozen DOFA needs the band wavelengths", expected="wavelengths_um=[...] in µm")
        model, info = build_dofa(size, weights)
        return DOFAEncoder(model, info, wavelengths_um, band_mean, band_std)
    raise EcoalignInputError(f"unknown encoder '{name_or_path}'",
                             expected="'dofa', an ecoalign adapt run directory (holding encoder/encoder.json), "
                                      "a train-organism run directory, or open_clip:ARCH")
