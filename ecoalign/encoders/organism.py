"""Organism CLIP encoders: an open_clip model (architecture + weights) that embeds photos and taxon texts.

Names: a directory saved by ``OrganismEncoder.save`` (or a ``train-organism`` run directory), ``open_clip:ARCH``
with ``weights=`` a local checkpoint (or None: random init, labelled so), open_clip's own ``local-dir:/path`` and
``hf-hub:org/name``, and ``bioclip``. Architectures are open_clip JSON configs; the tiny CPU ones ship in
``open_clip_configs/`` and are registered with open_clip on first use.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import atomic_path, sha256_file, write_json

CONFIG_DIR = Path(__file__).with_name("open_clip_configs")
TINY_CONFIGS: dict[str, dict] = {p.stem: json.loads(p.read_text()) for p in sorted(CONFIG_DIR.glob("*.json"))}
BIOCLIP = "hf-hub:imageomics/bioclip"
META_NAME = "organism_encoder.json"
CONFIG_NAME = "open_clip_config.json"  # open_clip's local-dir layout, so a saved encoder also loads in open_clip
WEIGHTS_NAME = "open_clip_model.safetensors"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HUB_FILES = f"{CONFIG_NAME} and open_clip_pytorch_model.bin (or open_clip_model.safetensors)"

log = logging.getLogger(__name__)
_registered = False


def register_tiny_configs() -> None:
    """Make ``ecoalign-tiny-vit`` etc. known to open_clip's factory (once per process)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


class OrganismEncoder:
    """An open_clip model with its transforms and tokenizer; embeddings are float32 and L2-normalised."""

    def __init__(self, model, preprocess, tokenizer, info: dict, *, model_cfg: dict, train_preprocess=None,
                 device: str = "cpu"):
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.train_preprocess = train_preprocess
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.device = device
        self.info = dict(info)
        self.info.setdefault("embed_dim", int(model_cfg["embed_dim"]))
        self.info.setdefault("image_px", _image_px(model))

    @property
    def embed_dim(self) -> int:
        return int(self.info["embed_dim"])

    @property
    def random_weights(self) -> bool:
        return bool(self.info.get("random_weights"))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().item())

    def image_tensor(self, images) -> "torch.Tensor":
        """Preprocessed (N, 3, H, W) batch from PIL images or image paths (unreadable files raise)."""
        import torch

        if isinstance(images, torch.Tensor):
            return images
        return torch.stack([self.preprocess(_open_image(im)) for im in images]) if len(images) else torch.zeros(
            (0, 3, self.info["image_px"], self.info["image_px"]))

    def embed(self, images, batch_size: int = 64) -> np.ndarray:
        """(N, D) image embeddings of PIL images, image paths, or an already preprocessed tensor."""
        return self._batched(images, batch_size,
                             lambda chunk: self.model.encode_image(self.image_tensor(chunk).to(self.device),
                                                                   normalize=True))

    def embed_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, D) text embeddings (e.g. captions of taxa)."""
        return self._batched(list(texts), batch_size,
                             lambda chunk: self.model.encode_text(self.tokenizer(chunk).to(self.device),
                                                                  normalize=True))

    def _batched(self, items, batch_size: int, encode) -> np.ndarray:
        """(N, D) float32 rows of ``encode`` applied to consecutive chunks, without autograd."""
        import torch

        out = []
        with torch.inference_mode():
            for s in range(0, len(items), batch_size):
                out.append(encode(items[s:s + batch_size]).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def identity(self) -> dict:
        """What produced an embedding: written into output metadata and used in cache keys."""
        keys = ("arch", "weights", "weights_sha256", "random_weights", "embed_dim", "image_px")
        return {"kind": "organism_clip", **{k: self.info.get(k) for k in keys}}

    def save(self, folder) -> Path:
        """Write weights (safetensors), open_clip's config and ``organism_encoder.json`` (last, as the marker).

        The folder is also an open_clip ``local-dir:``. ``info`` is kept as is: a trainer records there that the
        weights are trained (``random_weights`` False, ``initialised_from``)."""
        import open_clip
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp))
        preprocess_cfg = open_clip.get_model_preprocess_cfg(self.model)
        write_json(folder / CONFIG_NAME, {"model_cfg": self.model_cfg, "preprocess_cfg": preprocess_cfg})
        info = {**self.info, "weights": WEIGHTS_NAME, "weights_sha256": sha256_file(folder / WEIGHTS_NAME)}
        write_json(folder / META_NAME, {"format": 1, "info": info})
        return folder

    def __repr__(self) -> str:
        random = " RANDOM weights" if self.random_weights else ""
        if (self.info.get("initialised_from") or {}).get("random_weights"):
            random = " trained from RANDOM init"
        return f"OrganismEncoder({self.info.get('arch')}, weights={self.info.get('weights')}{random}, D={self.embed_dim})"


def load_organism_encoder(name_or_path, *, weights=None, device: str = "cpu") -> OrganismEncoder:
    """An organism encoder by name (see module docstring); bad names, files and shapes raise EcoalignInputError."""
    name = str(name_or_path)
    weights = None if weights in (None, "", "none") else str(weights)
    path = Path(name).expanduser()
    for folder in (path, path / "encoder"):
        if (folder / META_NAME).exists():
            _no_weights_arg(weights, name)
            return _load_saved(folder, device)
    if name == "bioclip":
        name = BIOCLIP
    if name.startswith("hf-hub:"):
        _no_weights_arg(weights, name)
        return _load_hub(name, device)
    if name.startswith("local-dir:"):
        _no_weights_arg(weights, name)
        return _load_local_dir(name, device)
    if name.startswith("open_clip:"):
        return _load_arch(name[len("open_clip:"):], weights, device)
    if path.is_dir():
        raise EcoalignInputError("this directory holds no organism encoder", path=path,
                                 expected=f"{META_NAME} (written by OrganismEncoder.save / train-organism) or "
                                          f"encoder/{META_NAME}; for an open_clip folder use local-dir:{path}")
    raise EcoalignInputError(f"unknown organism encoder '{name}'",
                             expected="a saved encoder or train-organism run directory, open_clip:ARCH, "
                                      "local-dir:/path, hf-hub:org/name, or bioclip")


def as_organism_encoder(encoder, *, weights=None, device: str = "cpu") -> OrganismEncoder:
    """``encoder`` itself when already loaded, else ``load_organism_encoder(encoder, weights=, device=)``; either
    way a warning when its weights are random (the organism verbs' ``encoder`` argument)."""
    if isinstance(encoder, (str, os.PathLike)):
        encoder = load_organism_encoder(encoder, weights=weights, device=device)
    elif weights not in (None, "", "none"):
        raise EcoalignInputError(f"weights='{weights}' given with an already loaded encoder",
                                 expected="weights only with an encoder name such as open_clip:ARCH")
    if getattr(encoder, "random_weights", False):
        log.warning("encoder on RANDOM weights (%s): its scores carry no learnt knowledge",
                    getattr(encoder, "info", {}).get("arch"))
    return encoder


def _no_weights_arg(weights, name) -> None:
    if weights is not None:
        raise EcoalignInputError(f"weights='{weights}' cannot be combined with '{name}', which names its own weights",
                                 expected="weights only with open_clip:ARCH")


def _load_arch(arch: str, weights: str | None, device: str) -> OrganismEncoder:
    import open_clip

    register_tiny_configs()
    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.4)
        raise EcoalignInputError(f"unknown open_clip architecture '{arch}'",
                                 expected=f"one of open_clip.list_models(); close names: {close or 'none'}; "
                                          f"tiny CPU configs: {sorted(TINY_CONFIGS)}")
    model_cfg = open_clip.get_model_config(arch)
    wpath = None
    if weights is not None:  # checked before the model is built: a bad path fails at once, alone
        wpath = Path(weights).expanduser()
        if not wpath.is_file():
            raise EcoalignInputError("checkpoint file not found", path=wpath,
                                     expected=f"a local open_clip checkpoint {WEIGHT_SUFFIXES} for '{arch}'")
        if not wpath.name.endswith(WEIGHT_SUFFIXES):
            raise EcoalignInputError("unsupported checkpoint type", path=wpath, expected=f"one of {WEIGHT_SUFFIXES}")
    with _without_open_clip_random_init_warning():  # we say ourselves when weights are random
        model, train_pp, val_pp = open_clip.create_model_and_transforms(arch, pretrained=None)
    info = {"arch": arch, "weights": "none", "weights_sha256": None, "random_weights": True}
    if wpath is not None:
        _load_checkpoint(model, wpath, arch)
        info.update(weights=str(wpath.resolve()), weights_sha256=sha256_file(wpath), random_weights=False)
    return OrganismEncoder(model, val_pp, open_clip.get_tokenizer(arch), info, model_cfg=model_cfg,
                           train_preprocess=train_pp, device=device)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _without_open_clip_random_init_warning():
    """open_clip warns on the root logger that a model without ``pretrained`` is initialised randomly, also when
    our checkpoint is loaded into it right after; ecoalign reports random weights itself (``random_weights``)."""
    root, drop = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _load_checkpoint(model, wpath: Path, arch: str) -> None:
    """open_clip's loader (handles 'state_dict' wrappers, 'module.' prefixes, safetensors), with a clear error."""
    import open_clip

    try:
        open_clip.load_checkpoint(model, str(wpath), strict=True)
    except Exception as exc:  # wrong shapes (RuntimeError/AssertionError in open_clip's resizers) or unreadable
        try:
            why = f"checkpoint does not fit architecture '{arch}': {_describe_mismatch(model, wpath)}"
        except Exception:
            why = f"cannot read checkpoint ({type(exc).__name__}: {exc})"
        raise EcoalignInputError(why, path=wpath,
                                 expected=f"a torch or safetensors state dict of an open_clip '{arch}' model") from exc


def _describe_mismatch(model, wpath: Path, show: int = 3) -> str:
    from open_clip.factory import load_state_dict

    ckpt = load_state_dict(str(wpath))
    own = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} in checkpoint vs {tuple(own[k].shape)} in model"
              for k, v in ckpt.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in ckpt]
    extra = [k for k in ckpt if k not in own]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensors differ in shape, first: " + "; ".join(shapes[:show]))
    if missing:
        parts.append(f"{len(missing)} missing, first: {missing[:show]}")
    if extra:
        parts.append(f"{len(extra)} unexpected, first: {extra[:show]}")
    if not parts:
        raise ValueError("no key or shape difference found")
    return ". ".join(parts)


def _load_local_dir(name: str, device: str, info: dict | None = None) -> OrganismEncoder:
    import open_clip
    from open_clip.factory import _find_checkpoint_in_dir

    folder = Path(name[len("local-dir:"):]).expanduser()
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise EcoalignInputError("open_clip local-dir lacks its config", path=folder,
                                 expected=f"{HUB_FILES} in this folder (as on a Hugging Face open_clip model page)")
    try:
        model_cfg = json.loads(cfg_path.read_text())["model_cfg"]
    except (ValueError, KeyError) as exc:
        raise EcoalignInputError(f"unreadable open_clip config ({exc})", path=cfg_path,
                                 expected='JSON with a "model_cfg" object') from exc
    ckpt = _find_checkpoint_in_dir(folder)
    if ckpt is None:
        raise EcoalignInputError("open_clip local-dir holds no weights", path=folder,
                                 expected="a .safetensors, .bin or .pth checkpoint beside open_clip_config.json")
    try:
        model, train_pp, val_pp = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    except Exception as exc:
        try:
            bare = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
            why = f"checkpoint does not fit its config: {_describe_mismatch(bare, Path(ckpt))}"
        except Exception:
            why = f"cannot build the model or read its checkpoint ({type(exc).__name__}: {exc})"
        raise EcoalignInputError(why, path=ckpt, expected=f"weights matching {cfg_path}") from exc
    info = info or {"arch": name, "weights": str(Path(ckpt).resolve()), "weights_sha256": sha256_file(ckpt),
                    "random_weights": False}
    return OrganismEncoder(model, val_pp, open_clip.get_tokenizer(f"local-dir:{folder}"), info, model_cfg=model_cfg,
                           train_preprocess=train_pp, device=device)


def _load_saved(folder: Path, device: str) -> OrganismEncoder:
    meta_path = folder / META_NAME
    try:
        info = json.loads(meta_path.read_text())["info"]
    except (ValueError, KeyError) as exc:
        raise EcoalignInputError(f"unreadable encoder metadata ({exc})", path=meta_path,
                                 expected='JSON with an "info" object, as written by OrganismEncoder.save') from exc
    wpath = folder / info.get("weights", WEIGHTS_NAME)
    if not wpath.is_file():
        raise EcoalignInputError("encoder weights missing", path=wpath, where=str(meta_path),
                                 expected=f"the file saved with sha256 {info.get('weights_sha256')}")
    sha = sha256_file(wpath)
    if info.get("weights_sha256") and sha != info["weights_sha256"]:
        raise EcoalignInputError(f"encoder weights changed since saving (sha256 {sha})", path=wpath,
                                 where=str(meta_path), expected=f"sha256 {info['weights_sha256']}")
    info = {**info, "weights": str(wpath.resolve()), "weights_sha256": sha, "encoder_dir": str(folder.resolve())}
    return _load_local_dir(f"local-dir:{folder}", device, info=info)


def _load_hub(name: str, device: str) -> OrganismEncoder:
    import open_clip
    from open_clip.factory import _get_hf_config

    repo = name[len("hf-hub:"):]
    where = (f"network access, or download {HUB_FILES} from https://huggingface.co/{repo} into a folder and pass "
             f"local-dir:/that/folder (or set HF_HUB_OFFLINE=1 to use a filled Hugging Face cache)")
    if not _hub_reachable():
        raise EcoalignInputError(f"cannot fetch '{name}': the Hugging Face hub is not reachable (offline)",
                                 expected=where)
    try:
        model, train_pp, val_pp = open_clip.create_model_and_transforms(name)
        model_cfg = _get_hf_config(repo)["model_cfg"]
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:
        raise EcoalignInputError(f"cannot fetch '{name}' from the Hugging Face hub ({type(exc).__name__}: {exc})",
                                 expected=where) from exc
    info = {"arch": name, "weights": name, "weights_sha256": None, "random_weights": False}
    return OrganismEncoder(model, val_pp, tokenizer, info, model_cfg=model_cfg, train_preprocess=train_pp,
                           device=device)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connection probe, so an offline machine gets a clear error now rather than after minutes of
    retries; skipped (True) in HF_HUB_OFFLINE cache mode and behind a proxy, where a direct probe says nothing."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or any(
            os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _open_image(item):
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    try:
        with Image.open(item) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise EcoalignInputError(f"unreadable image ({exc})", path=item, expected="a JPEG/PNG/... photo") from exc


def _image_px(model) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)
