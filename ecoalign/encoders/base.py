"""The encoder interface.

Every encoder (frozen DOFA, DOFA with a trained adapter, an organism CLIP model) turns raw inputs into a
preprocessed batch (``image_tensor``), that batch into float32 embeddings (``embed``), and says what it is
(``identity``: a JSON-able dict written into output metadata and used in cache keys).

Encoders of multispectral raster windows (``WindowEncoder``: DOFA, adapted or not) add what maps and point
embeddings need: the band wavelengths and their fixed standardisation, the precision, the backbone's input size,
the frozen backbone (``features``, described by ``BackboneInfo``; its output is cached on disk) and the trained
``head`` on top of it.
They all prepare windows with ``ecoalign.data.patches.preprocess_windows``, the one preprocessing of raster windows.

No heavy import at module level: the command's ``--help`` imports this module.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class BackboneInfo:
    """What a frozen backbone is: enough to rebuild it and to key caches on it."""

    name: str
    size: str
    embed_dim: int
    weights: str  # "none", an enum name, or a checkpoint file name
    weights_sha256: str | None
    random_weights: bool
    input_px: int = 224

    def as_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Encoder(Protocol):
    """What every encoder offers, whatever it embeds (raster windows, photos)."""

    @property
    def embed_dim(self) -> int:
        """Length of one embedding."""

    @property
    def random_weights(self) -> bool:
        """True when the weights are a random initialisation (the embeddings carry no pretrained knowledge)."""

    def image_tensor(self, images) -> "torch.Tensor":
        """The preprocessed batch the model takes, from raw inputs."""

    def embed(self, images, batch_size: int = 32) -> np.ndarray:
        """(N, embed_dim) float32 embeddings of raw inputs, preprocessing included."""

    def identity(self) -> dict:
        """What produced an embedding: written into output metadata and used in cache keys."""


@runtime_checkable
class WindowEncoder(Encoder, Protocol):
    """An encoder of multispectral raster windows: a frozen backbone (``features``) and a trained ``head``."""

    wavelengths_um: list[float]  # band centre wavelengths, in band order
    band_mean: np.ndarray | None  # fixed per-band standardisation (part of identity()); None: not fixed yet, see
    band_std: np.ndarray | None    # ecoalign.aerial.embed (fixed once from the rasters embedded) and mapping.plan
    precision: str  # fp32 | bf16 | int8: how the frozen backbone computes (part of identity())
    patch_size_m: float | None  # ground size of a window the encoder was trained on, if any
    features: Callable[["torch.Tensor"], "torch.Tensor"]  # preprocessed batch -> frozen backbone features
    info: BackboneInfo  # the frozen backbone (keys the on-disk feature cache)

    @property
    def input_px(self) -> int:
        """Side of the square input the backbone takes."""

    def head(self, frozen: Any) -> np.ndarray:
        """The trained part, applied to frozen features (identity for a frozen encoder)."""

    def with_band_stats(self, band_mean, band_std) -> "WindowEncoder":
        """The same encoder with fixed band statistics (one value per band, in the raster's units)."""
