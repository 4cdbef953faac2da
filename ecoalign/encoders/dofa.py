"""The DOFA encoder: the frozen backbone from torchgeo (building it, finding its weights, embedding patches fast),
optionally followed by a trained adapter.

Models and weights are looked up through torchgeo's registry (``torchgeo.models.get_model``, ``get_model_weights``,
``get_weight``). Weights come from a torchgeo enum name (``DOFA_MAE`` or ``DOFABase16_Weights.DOFA_MAE``, read from
the torch hub cache where torchgeo would download it; nothing is downloaded here), a local checkpoint
(.pth/.pt/.safetensors), or ``none`` (random init, seeded, and labelled as such everywhere).

Precision (``PRECISIONS``) is part of the encoder: ``fp32``; ``bf16`` (the transformer blocks in bfloat16,
weights cast once per encoder and device, float32 outputs); ``int8`` (CPU only, prepared once per encoder: int8
matmuls of the MLP linears, see ``ecoalign.encoders.int8``; ``int8_scheme()``, which says how on this machine, is
in identities and cache keys). ``auto`` is bf16 on CUDA and fp32 elsewhere. The wavelength-generated patch
embedding runs in float32 at every precision.
"""
from __future__ import annotations

import copy
import logging
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
PRECISIONS = ("auto", "fp32", "bf16", "int8")

log = logging.getLogger(__name__)


def resolve_precision(precision: str | None = "auto", *, device=None, where: str = "precision") -> str:
    """``fp32``, ``bf16`` or ``int8`` from a user's value (``where`` names the flag or key in errors); ``auto``
    (or None) is bf16 on CUDA (``device``, default: CUDA when available) and fp32 elsewhere."""
    import torch

    value = "auto" if precision is None else str(precision).strip().lower()
    if value not in PRECISIONS:
        raise EcoalignInputError(f"unknown precision {precision!r}", where=where,
                                 expected=f"one of {', '.join(PRECISIONS)}")
    if value == "auto":
        cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        return "bf16" if cuda else "fp32"
    return value


def check_band_stats(band_mean, band_std, n_bands: int) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """float32 (mean, std) of ``n_bands`` values each, std > 0; or (None, None) when neither is given."""
    if band_mean is None and band_std is None:
        return None, None
    if band_mean is None or band_std is None:
        missing = "band_std (--band-std)" if band_std is None else "band_mean (--band-mean)"
        raise EcoalignInputError(f"{missing} is missing", where="band statistics",
                                 expected="both band_mean and band_std (--band-mean, --band-std), one value per band")
    out = []
    for name, values in (("band_mean (--band-mean)", band_mean), ("band_std (--band-std)", band_std)):
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.size != n_bands:
            raise EcoalignInputError(f"{arr.size} value(s) for {n_bands} band(s)", where=name,
                                     expected="one value per band, in band order")
        if not np.isfinite(arr).all():
            raise EcoalignInputError(f"non-finite value in {arr.tolist()}", where=name, expected="finite numbers")
        out.append(arr.astype(np.float32))
    if (out[1] <= 0).any():
        raise EcoalignInputError(f"standard deviations {out[1].tolist()}", where="band_std (--band-std)",
                                 expected="positive values (the spread of each band in the raster's units)")
    return out[0], out[1]


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
    depends on the wavelengths alone, so it is cached here (always computed in float32). Output equals
    ``model.forward_features`` in fp32; ``precision`` bf16 runs a bfloat16 copy of the transformer blocks, int8
    an int8 copy (``ecoalign.encoders.int8``), both made on the first call (bf16: per device). The patch
    embedding and the final norm are float32 at every precision. Outputs are float32.
    """

    def __init__(self, model, wavelengths_um: Sequence[float], precision: str = "fp32"):
        self.model = model
        self.wavelengths = [float(w) for w in wavelengths_um]
        self.precision = resolve_precision(precision)
        self._kernel = None
        self._int8_blocks = None
        self._bf16_blocks = None  # (device, blocks)

    def _blocks(self, device):
        """The transformer blocks to run: the model's, or their copy for this precision, made once."""
        import torch

        if self.precision == "fp32":
            return self.model.blocks
        if self.precision == "bf16":
            # weights cast once: torch.autocast casts every weight again on every call, and its float32 islands
            # cost casts between the layers; bfloat16 matmuls run on the CPU's AMX/AVX512-BF16 units when present
            if self._bf16_blocks is None or self._bf16_blocks[0] != device:
                blocks = copy.deepcopy(torch.nn.ModuleList(self.model.blocks)).to(device=device, dtype=torch.bfloat16)
                self._bf16_blocks = (device, blocks.eval())
            return self._bf16_blocks[1]
        if device.type != "cpu":
            raise EcoalignInputError(f"precision int8 runs on CPU only (oneDNN or torch dynamic quantisation), "
                                     f"not on {device}",
                                     where="--precision / precision=", expected="bf16 or fp32 on a GPU")
        if self._int8_blocks is None:
            from ecoalign.encoders.int8 import int8_blocks, int8_scheme

            self._int8_blocks = int8_blocks(torch.nn.ModuleList(self.model.blocks))
            log.debug("DOFA transformer blocks quantised: %s", int8_scheme())
        return self._int8_blocks

    def _patch_kernel(self, device):
        import torch
        from torchgeo.models.dofa import position_embedding

        if self._kernel is None or self._kernel[0].device != device:
            pe = self.model.patch_embed
            waves = torch.tensor(self.wavelengths, device=device).float()
            with torch.autocast(device.type, enabled=False):  # the same float32 kernel at every precision
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
        blocks = self._blocks(x.device)
        with torch.inference_mode():
            weight, bias = self._patch_kernel(x.device)
            # the patch embedding stays float32 at every precision: its generated kernel loses the embedding in
            # bfloat16 (cosine ~0.6 to fp32 on DOFA-small), and it is a small share of the compute
            with torch.autocast(x.device.type, enabled=False):
                x = F.conv2d(x.float(), weight.float(), bias=None if bias is None else bias.float(),
                             stride=m.patch_embed.kernel_size, padding=1, dilation=1)
                x = x.flatten(2).transpose(1, 2) + m.pos_embed[:, 1:, :]
                cls = (m.cls_token + m.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
                x = torch.cat((cls, x), dim=1)
            # this precision's dtype decides, whatever autocast a caller has opened around it
            with torch.autocast(x.device.type, enabled=False):
                x = x.to(next(blocks.parameters()).dtype)  # bfloat16 for bf16 and, where oneDNN runs it, int8
                for block in blocks:
                    x = block(x)
                x = x.float()
                return m.fc_norm(x[:, 1:, :].mean(dim=1)) if m.global_pool else m.norm(x)[:, 0]


class DOFAEncoder:
    """Frozen DOFA, optionally followed by a trained adapter: a ``WindowEncoder`` of a known band set.

    It carries its wavelengths, band standardisation and precision, so notebook users do not have to. The band
    statistics are fixed, never taken from whichever raster is read: an adapted encoder's come from its training
    imagery, a frozen one's are given (``band_mean``/``band_std``) or, left unset, fixed once by the first
    ``embed`` (``with_band_stats``) or taken from the model bundle by ``map``. Both statistics and precision are
    part of ``identity()``, so outputs and caches are keyed on them."""

    def __init__(self, model, info: BackboneInfo, wavelengths_um: Sequence[float], band_mean=None, band_std=None,
                 adapter=None, patch_size_m: float | None = None, metadata: dict | None = None,
                 precision: str | None = "auto"):
        self.model = model
        self.info = info
        self.wavelengths_um = [float(w) for w in wavelengths_um]
        self.band_mean, self.band_std = check_band_stats(band_mean, band_std, len(self.wavelengths_um))
        self.adapter = adapter
        self.patch_size_m = patch_size_m
        self.metadata = metadata or {}
        self.precision = resolve_precision(precision)  # fp32 | bf16 | int8: how the frozen backbone computes
        self.features = DOFAFeatures(model, self.wavelengths_um, self.precision)

    def with_band_stats(self, band_mean, band_std) -> "DOFAEncoder":
        """The same encoder (shared model and prepared backbone) with fixed band statistics."""
        other = copy.copy(self)
        other.band_mean, other.band_std = check_band_stats(band_mean, band_std, len(self.wavelengths_um))
        return other

    def with_precision(self, precision: str | None) -> "DOFAEncoder":
        """The same encoder computing at another precision (itself when it is the same)."""
        value = resolve_precision(precision)
        if value == self.precision:
            return self
        other = copy.copy(self)
        other.precision, other.features = value, DOFAFeatures(self.model, self.wavelengths_um, value)
        return other

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
               "wavelengths_um": self.wavelengths_um, "embed_dim": self.embed_dim, "precision": self.precision,
               "band_mean": None if self.band_mean is None else [float(v) for v in self.band_mean],
               "band_std": None if self.band_std is None else [float(v) for v in self.band_std]}
        if self.precision == "int8":  # what int8 means is part of what produced the embedding
            from ecoalign.encoders.int8 import int8_scheme

            out["int8_scheme"] = int8_scheme()
        if self.adapter is not None:
            out["adapter_sha256"] = self.metadata.get("adapter_sha256")
            out["run_dir"] = self.metadata.get("run_dir")
        return out

    def __repr__(self) -> str:
        kind = "adapted" if self.adapter is not None else "frozen"
        stats = "fixed band statistics" if self.band_mean is not None else "band statistics not yet fixed"
        return (f"DOFAEncoder({kind}, DOFA-{self.info.size}, weights={self.info.weights}"
                f"{' RANDOM' if self.random_weights else ''}, bands={self.wavelengths_um}, {self.precision}, {stats})")
