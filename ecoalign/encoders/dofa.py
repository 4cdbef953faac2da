"""The DOFA encoder: the frozen backbone from torchgeo (building it, finding its weights, embedding patches fast),
optionally followed by a trained adapter.

Models and weights are looked up through torchgeo's registry (``torchgeo.models.get_model``, ``get_model_weights``,
``get_weight``). Weights come from a torchgeo enum name (``DOFA_MAE`` or ``DOFABase16_Weights.DOFA_MAE``, read from
the torch hub cache where torchgeo would download it; nothing is downloaded here), a local checkpoint
(.pth/.pt/.safetensors), or ``none`` (random init, seeded, and labelled as such everywhere).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.patches import preprocess_windows
from ecoalign.encoders.base import BackboneInfo

SIZES = {"small": "dofa_small_patch16_224", "base": "dofa_base_patch16_224", "large": "dofa_large_patch16_224"}
EMBED_DIMS = {"small": 384, "base": 768, "large": 1024}
# Keys that torchgeo itself builds fresh when loading DOFA checkpoints (pooling norm and classifier head).
_FRESH_KEYS = {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
RANDOM_SEED = 0


def _weights_enum(size: str):
    """torchgeo's weights enum of DOFA-``size``, or None when torchgeo publishes none."""
    import torchgeo.models as tgm

    try:
        return tgm.get_model_weights(SIZES[size])
    except KeyError:
        return None


def _hub_checkpoint(size: str, name: str):
    """(torchgeo weights enum member, its file in the torch hub cache) for an enum name; the file must be there."""
    import torch
    import torchgeo.models as tgm

    enum = _weights_enum(size)
    if enum is None:
        published = [s for s in SIZES if _weights_enum(s) is not None]
        raise EcoalignInputError(f"torchgeo publishes no pretrained weights for DOFA-{size}",
                                 expected=f"--weights none or a local checkpoint; enums exist for {sorted(published)}")
    try:
        weights = tgm.get_weight(name if "." in name else f"{enum.__name__}.{name}")
    except ValueError:
        weights = None
    if not isinstance(weights, enum):
        raise EcoalignInputError(f"unknown weights '{name}' for DOFA-{size}",
                                 expected=f"one of {[w.name for w in enum]}, a checkpoint path, or 'none'")
    expected = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not expected.exists():
        raise EcoalignInputError(
            f"pretrained weights {weights} are not in the torch hub cache and cannot be downloaded here",
            path=expected,
            expected=f"the checkpoint file at that location (download it from {weights.url} on a machine with "
                     f"network), or pass --weights /path/to/checkpoint.pth, or --weights none for a random-weights run")
    return weights, expected


def _load_state_dict(path: Path) -> dict:
    import torch

    if not path.exists():
        raise EcoalignInputError("checkpoint not found", path=path,
                                 expected="a .pth/.pt/.safetensors DOFA checkpoint, a torchgeo enum name (DOFA_MAE) or 'none'")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise EcoalignInputError(f"cannot read the checkpoint: {exc}", path=path) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EcoalignInputError("the checkpoint holds no state dict", path=path)
    return {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}


def _check_and_load(model, state: dict, source: Path) -> None:
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state) - _FRESH_KEYS)
    shape = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in state if k in own and state[k].shape != own[k].shape]
    if unexpected or missing or shape:
        detail = []
        if shape:
            detail.append("shape mismatches " + ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in shape[:3]))
        if missing:
            detail.append(f"missing keys {missing[:5]}")
        if unexpected:
            detail.append(f"unexpected keys {unexpected[:5]}")
        raise EcoalignInputError("the checkpoint does not fit this DOFA model: " + "; ".join(detail), path=source,
                                 expected="a checkpoint of the same DOFA size (check --backbone size: small/base/large)")
    model.load_state_dict(state, strict=False)


def build_dofa(size: str = "base", weights: str | None = "none"):
    """Return (model in eval mode with frozen parameters, BackboneInfo)."""
    import torch
    import torchgeo.models as tgm

    from ecoalign.core.io import sha256_file

    if size not in SIZES:
        raise EcoalignInputError(f"unknown DOFA size '{size}'", expected=f"one of {sorted(SIZES)}")
    weights = "none" if weights in (None, "", "none", "None", "random") else str(weights)
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_SEED)  # a random-weights backbone is still the same one every run
        model = tgm.get_model(SIZES[size])
    sha = None
    if weights == "none":
        label = "none"
    elif Path(weights).suffix in (".pth", ".pt", ".safetensors", ".bin") or "/" in weights:
        path = Path(weights).expanduser()
        _check_and_load(model, _load_state_dict(path), path)
        label, sha = path.name, sha256_file(path)
    else:
        enum_weights, path = _hub_checkpoint(size, weights)
        _check_and_load(model, enum_weights.get_state_dict(progress=False), path)
        label, sha = str(enum_weights), sha256_file(path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info = BackboneInfo(name="dofa", size=size, embed_dim=EMBED_DIMS[size], weights=label, weights_sha256=sha,
                        random_weights=(weights == "none"))
    return model, info


class DOFAFeatures:
    """Pooled DOFA features with the wavelength-dependent patch-embedding kernel computed once per band set.

    DOFA's dynamic patch embedding runs a small transformer over the wavelengths on every forward; the result
    depends on the wavelengths alone, so it is cached here. Output equals ``model.forward_features``.
    """

    def __init__(self, model, wavelengths_um: Sequence[float]):
        self.model = model
        self.wavelengths = [float(w) for w in wavelengths_um]
        self._kernel = None

    def _patch_kernel(self, device):
        import torch
        from torchgeo.models.dofa import position_embedding

        if self._kernel is None or self._kernel[0].device != device:
            pe = self.model.patch_embed
            waves = torch.tensor(self.wavelengths, device=device).float()
            feats = pe.fclayer(position_embedding(pe.dynamic_embed_dim, waves * 1000))
            weight, bias = pe.weight_generator(feats)
            weight = weight.view(len(self.wavelengths), pe.kernel_size, pe.kernel_size, pe.embed_dim)
            weight = weight.permute([3, 0, 1, 2]) * pe.scaler
            bias = bias.view([pe.embed_dim]) * pe.scaler if bias is not None else None
            self._kernel = (weight, bias)
        return self._kernel

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        m = self.model
        with torch.inference_mode():
            weight, bias = self._patch_kernel(x.device)
            x = F.conv2d(x, weight.to(x.dtype), bias=None if bias is None else bias.to(x.dtype),
                         stride=m.patch_embed.kernel_size, padding=1, dilation=1)
            x = x.flatten(2).transpose(1, 2) + m.pos_embed[:, 1:, :]
            cls = (m.cls_token + m.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
            x = torch.cat((cls, x), dim=1)
            for block in m.blocks:
                x = block(x)
            if m.global_pool:
                return m.fc_norm(x[:, 1:, :].mean(dim=1))
            return m.norm(x)[:, 0]


class DOFAEncoder:
    """Frozen DOFA, optionally followed by a trained adapter: a ``WindowEncoder`` of a known band set.

    It carries its wavelengths and band standardisation, so notebook users do not have to."""

    def __init__(self, model, info: BackboneInfo, wavelengths_um: Sequence[float], band_mean=None, band_std=None,
                 adapter=None, patch_size_m: float | None = None, metadata: dict | None = None):
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

    @property
    def input_px(self) -> int:
        return self.info.input_px

    def image_tensor(self, images):
        """(B, bands, 224, 224) model input from raw windows (B, bands, H, W) or one window (bands, H, W) in the
        raster's units, NaN where invalid: ``preprocess_windows`` with this encoder's band standardisation."""
        import torch

        x = images if isinstance(images, torch.Tensor) else np.asarray(images, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != len(self.wavelengths_um):
            raise EcoalignInputError(f"images of shape {tuple(x.shape)}",
                                     expected=f"(batch, {len(self.wavelengths_um)} bands, H, W) for wavelengths "
                                              f"{self.wavelengths_um}")
        return preprocess_windows(x, self.band_mean, self.band_std, input_px=self.input_px)

    def embed(self, images, batch_size: int = 32) -> np.ndarray:
        """Embeddings (B, D) of raw image windows; standardisation and resizing to 224 px included."""
        import torch

        x = self.image_tensor(images)
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
