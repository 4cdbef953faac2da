"""The frozen DOFA backbone from torchgeo: building it, finding its weights, and embedding patches fast.

Weights come from a torchgeo enum name (looked up in the torch hub cache, as torchgeo would download it),
a local checkpoint (.pth/.pt/.safetensors), or ``none`` (random init, seeded, and labelled as such everywhere).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ecoalign.core.errors import EcoalignInputError

SIZES = {"small": "dofa_small_patch16_224", "base": "dofa_base_patch16_224", "large": "dofa_large_patch16_224"}
EMBED_DIMS = {"small": 384, "base": 768, "large": 1024}
WEIGHT_ENUMS = {"base": "DOFABase16_Weights", "large": "DOFALarge16_Weights"}
# Keys that torchgeo itself builds fresh when loading DOFA checkpoints (pooling norm and classifier head).
_FRESH_KEYS = {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
RANDOM_SEED = 0


@dataclass(frozen=True)
class BackboneInfo:
    """What the backbone is: enough to rebuild it and to key caches on it."""

    name: str
    size: str
    embed_dim: int
    weights: str  # "none", an enum name, or a checkpoint file name
    weights_sha256: str | None
    random_weights: bool
    input_px: int = 224

    def as_dict(self) -> dict:
        return asdict(self)


def _hub_checkpoint(size: str, enum_name: str):
    import torch
    import torchgeo.models as tgm

    if size not in WEIGHT_ENUMS:
        raise EcoalignInputError(f"torchgeo publishes no pretrained weights for DOFA-{size}",
                                 expected=f"--weights none or a local checkpoint; enums exist for {sorted(WEIGHT_ENUMS)}")
    enum = getattr(tgm, WEIGHT_ENUMS[size])
    try:
        weights = enum[enum_name]
    except KeyError:
        raise EcoalignInputError(f"unknown weights '{enum_name}' for DOFA-{size}",
                                 expected=f"one of {[w.name for w in enum]}, a checkpoint path, or 'none'") from None
    expected = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not expected.exists():
        raise EcoalignInputError(
            f"pretrained weights {enum.__name__}.{enum_name} are not in the torch hub cache and cannot be downloaded here",
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
    builder = getattr(tgm, SIZES[size])
    weights = "none" if weights in (None, "", "none", "None", "random") else str(weights)
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_SEED)  # a random-weights backbone is still the same one every run
        model = builder()
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
        label, sha = f"{type(enum_weights).__name__}.{weights}", sha256_file(path)
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
