"""Webdataset-layout tar shards: the one place organism samples are written and read.

Why: open_clip, webdataset and BioCLIP's tooling all stream ``<key>.<ext>`` members out of plain tars, so
curated data written here can be fed to any of them; ecoalign's own trainers and evaluators read the same
shards through :func:`iter_samples`. Layout per sample: ``<key>.jpg``/``.png`` (original image bytes),
``<key>.json`` (key, taxon, common, split, source) and one ``<key>.<kind>.txt`` per text type.
General image-text pairs (replay data) are ``<key>.jpg`` + ``<key>.txt``.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import atomic_path

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SPLITS = ("train", "val", "test", "test_unseen")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards: same input -> same bytes
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def write_shards(records: Iterable[Mapping[str, bytes]], out_dir: str | os.PathLike, *,
                 shard_size: int = 1000, prefix: str = "shard") -> list[Path]:
    """Write records ({"__key__": key, "<suffix>": bytes, ...}) into ``prefix-000000.tar`` ... of ``shard_size``.

    Keys must not contain dots (webdataset splits member names at the first dot). One shard is held in
    memory at a time and each is written atomically.
    """
    if shard_size < 1:
        raise EcoalignInputError(f"shard size {shard_size} must be at least 1", where="--shard-size")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    batch: list[Mapping[str, bytes]] = []

    def flush():
        path = out_dir / f"{prefix}-{len(paths):06d}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
            for record in batch:
                key = str(record["__key__"])
                if "." in key or "/" in key:
                    raise ValueError(f"shard key {key!r} must not contain '.' or '/'")
                for suffix, data in record.items():
                    if suffix != "__key__":
                        _add_member(tar, f"{key}.{suffix}", data)
        paths.append(path)
        batch.clear()

    for record in records:
        batch.append(record)
        if len(batch) == shard_size:
            flush()
    if batch:
        flush()
    return paths


def sample_record(key: str, image_bytes: bytes, image_ext: str, meta: Mapping, texts: Mapping[str, str]) -> dict:
    """One organism sample in shard form (see the module docstring)."""
    record = {"__key__": key, image_ext: image_bytes,
              "json": json.dumps(dict(meta), ensure_ascii=False, sort_keys=True).encode()}
    for kind, t in texts.items():
        record[f"{kind}.txt"] = t.encode()
    return record


def iter_tar_groups(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) for each sample, reading members in order (consecutive members share a key)."""
    for path in paths:
        path = Path(path)
        try:
            tar = tarfile.open(path, "r")
        except (tarfile.TarError, OSError) as exc:
            raise EcoalignInputError(f"cannot read shard: {exc}", path=path, expected="a tar file") from exc
        with tar:
            key, group = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                k, suffix = base.split(".", 1)
                if k != key:
                    if group:
                        yield key, group
                    key, group = k, {}
                group[suffix.lower()] = tar.extractfile(member).read()
            if group:
                yield key, group


def _image_of(group: Mapping[str, bytes]) -> tuple[str, bytes] | tuple[None, None]:
    for ext in IMAGE_EXTS:
        if ext in group:
            return ext, group[ext]
    return None, None


def decode_image(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def shard_paths(curated_dir: str | os.PathLike, split: str) -> list[Path]:
    """The shards of one split of an ``ecoalign curate`` output (empty list for an empty split)."""
    curated_dir = Path(curated_dir)
    if split not in SPLITS:
        raise EcoalignInputError(f"unknown split {split!r}", expected=f"one of {SPLITS}")
    if not (curated_dir / "curation.json").exists():
        raise EcoalignInputError("not a curated data set (no curation.json)", path=curated_dir,
                                 expected="the --out directory of `ecoalign curate`")
    return sorted((curated_dir / split).glob("shard-*.tar"))


def iter_samples(paths: Iterable[str | os.PathLike], *, decode: bool = True) -> Iterator[dict]:
    """Organism samples: dicts with ``key``, ``image`` (PIL RGB, or raw bytes if not decode), ``image_ext``,
    ``taxon`` (:class:`~ecoalign.data.taxonomy.Taxon`), ``texts`` ({kind: str}) and ``json`` (the sidecar)."""
    from ecoalign.data.taxonomy import Taxon

    for key, group in iter_tar_groups(paths):
        ext, data = _image_of(group)
        if data is None or "json" not in group:
            raise EcoalignInputError(f"sample {key!r} lacks an image or its .json sidecar",
                                     expected="<key>.jpg|png + <key>.json + <key>.<kind>.txt members")
        meta = json.loads(group["json"])
        texts = {s[: -len(".txt")]: group[s].decode() for s in group if s.endswith(".txt")}
        yield {"key": key, "image": decode_image(data) if decode else data, "image_ext": ext,
               "taxon": Taxon.from_dict({**meta.get("taxon", {}), "common": meta.get("common")}),
               "texts": texts, "json": meta}


def read_general_pairs(path: str | os.PathLike, *, decode: bool = True) -> Iterator[dict]:
    """General image-text pairs (replay data) from a tar or a directory of tars: dicts key, image, text."""
    path = Path(path)
    if path.is_dir():
        paths = sorted(path.glob("*.tar"))
    elif path.is_file():
        paths = [path]
    else:
        paths = []
    if not paths:
        raise EcoalignInputError("no general image-text pairs found", path=path,
                                 expected="a .tar or a directory of .tar files with <key>.jpg + <key>.txt")
    for key, group in iter_tar_groups(paths):
        ext, data = _image_of(group)
        if data is None or "txt" not in group:
            continue
        yield {"key": key, "image": decode_image(data) if decode else data, "text": group["txt"].decode()}
