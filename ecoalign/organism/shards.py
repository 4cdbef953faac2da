"""Webdataset tar shards: the one place organism samples are written and read (with the ``webdataset`` library).

Why: open_clip_train, webdataset and BioCLIP's tooling all stream ``<key>.<ext>`` members out of plain tars, so
curated data written here can be fed to any of them. Layout per sample: ``<key>.jpg``/``.png`` (original image
bytes), ``<key>.txt`` (a default caption: what open_clip_train's ``--train-data`` reads), ``<key>.json`` (key,
taxon, common, split, source) and one ``<key>.<kind>.txt`` per text type. General image-text pairs are
``<key>.jpg`` + ``<key>.txt``. Each shard folder has ``sizes.json`` ({shard file: samples}, open_clip's
convention), so an epoch is counted without reading the data.

Shards from curate before this layout (no ``sizes.json``, no ``<key>.txt``) still read: their samples are
counted from the tar headers, and the log says to re-run curate for open_clip_train.
"""
from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from ecoalign.core.errors import EcoalignInputError

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SPLITS = ("train", "val", "test", "test_unseen")
SIZES = "sizes.json"


def write_shards(records: Iterable[Mapping[str, bytes]], out_dir: str | os.PathLike, *,
                 shard_size: int = 1000, prefix: str = "shard") -> list[Path]:
    """Write records ({"__key__": key, "<suffix>": bytes, ...}) into ``prefix-000000.tar`` ... of ``shard_size``
    with webdataset's ``ShardWriter``, and their sample counts into ``sizes.json``.

    Keys must not contain dots (webdataset splits member names at the first dot). Each shard is written under a
    temporary name and renamed when complete; members have mtime 0 (same input -> same bytes)."""
    import webdataset as wds

    if shard_size < 1:
        raise EcoalignInputError(f"shard size {shard_size} must be at least 1", where="--shard-size")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    counts: dict[str, int] = {}

    def done(tmp_name: str) -> None:  # ShardWriter's hook once a shard is closed
        final = Path(tmp_name[: -len(".partial")])
        os.replace(tmp_name, final)
        paths.append(final)

    pattern = str(out_dir / f"{prefix}-%06d.tar.partial")
    with wds.ShardWriter(pattern, maxcount=shard_size, maxsize=float("inf"), post=done, verbose=0,
                         mtime=0, user="", group="") as sink:
        for record in records:
            key = str(record["__key__"])
            if "." in key or "/" in key:
                raise ValueError(f"shard key {key!r} must not contain '.' or '/'")
            sink.write(dict(record))
            name = Path(sink.fname[: -len(".partial")]).name
            counts[name] = counts.get(name, 0) + 1
    sizes_path = out_dir / SIZES
    old = json.loads(sizes_path.read_text()) if sizes_path.exists() else {}
    from ecoalign.core.io import write_json

    write_json(sizes_path, {**old, **counts})
    return paths


def sample_record(key: str, image_bytes: bytes, image_ext: str, meta: Mapping, texts: Mapping[str, str],
                  caption: str | None = None) -> dict:
    """One organism sample in shard form (see the module docstring); ``caption``: the plain ``.txt``
    (default: the first text type's)."""
    record = {"__key__": key, image_ext: image_bytes,
              "json": json.dumps(dict(meta), ensure_ascii=False, sort_keys=True).encode()}
    if caption is None and texts:
        caption = next(iter(texts.values()))
    if caption is not None:
        record["txt"] = caption.encode()
    for kind, t in texts.items():
        record[f"{kind}.txt"] = t.encode()
    return record


def raise_input_error(exc: Exception) -> bool:
    """webdataset handler: a broken shard is the user's input error, named."""
    raise EcoalignInputError(f"cannot read shard: {exc}", expected="complete webdataset tar shards") from exc


def iter_tar_groups(paths: Iterable[str | os.PathLike], handler=raise_input_error) -> Iterator[dict]:
    """webdataset samples ({"__key__", "__url__", suffix: bytes}) of the tars, in order."""
    from webdataset.tariterators import tarfile_samples

    return tarfile_samples(({"url": str(p)} for p in paths), handler=handler)


def image_of(group: Mapping[str, bytes]) -> tuple[str, bytes] | tuple[None, None]:
    for ext in IMAGE_EXTS:
        if ext in group:
            return ext, group[ext]
    return None, None


def decode_image(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def texts_of(group: Mapping[str, bytes]) -> dict[str, str]:
    """{kind: text} of the ``<key>.<kind>.txt`` members."""
    return {s[: -len(".txt")]: group[s].decode() for s in group if s.endswith(".txt") and s != "txt"}


def shard_paths(curated_dir: str | os.PathLike, split: str) -> list[Path]:
    """The shards of one split of an ``ecoalign curate`` output (empty list for an empty split)."""
    curated_dir = Path(curated_dir)
    if split not in SPLITS:
        raise EcoalignInputError(f"unknown split {split!r}", expected=f"one of {SPLITS}")
    if not (curated_dir / "curation.json").exists():
        raise EcoalignInputError("not a curated data set (no curation.json)", path=curated_dir,
                                 expected="the --out directory of `ecoalign curate`")
    return sorted((curated_dir / split).glob("shard-*.tar"))


def shard_sizes(paths: list[str | os.PathLike]) -> list[int]:
    """Samples per shard: from the folders' ``sizes.json`` where listed, else counted from the tar headers
    (distinct keys; older shards; no member is read)."""
    out, cache = [], {}
    for p in paths:
        p = Path(p)
        if p.parent not in cache:
            f = p.parent / SIZES
            cache[p.parent] = json.loads(f.read_text()) if f.exists() else {}
        n = cache[p.parent].get(p.name)
        out.append(int(n) if n is not None else _count_keys(p))
    return out


def _count_keys(path: Path) -> int:
    """Distinct keys in a tar's headers; a damaged tar counts what comes before the damage (the stream then
    skips and reports the rest), a file that is no tar at all is refused."""
    keys: set[str] = set()
    try:
        with tarfile.open(path, "r") as tar:  # seeks over member data: headers only
            for m in tar:
                if m.isfile():
                    keys.add(m.name.rsplit("/", 1)[-1].split(".", 1)[0])
    except (tarfile.TarError, OSError) as exc:
        if not keys:
            raise EcoalignInputError(f"cannot read shard: {exc}", path=path, expected="a tar file") from exc
        log.warning("%s is damaged (%s): %d sample(s) before the damage counted", path, exc, len(keys))
    return len(keys)


def iter_samples(paths: Iterable[str | os.PathLike], *, decode: bool = True) -> Iterator[dict]:
    """Organism samples: dicts with ``key``, ``image`` (PIL RGB, or raw bytes if not decode), ``image_ext``,
    ``taxon`` (:class:`~ecoalign.data.taxonomy.Taxon`), ``texts`` ({kind: str}) and ``json`` (the sidecar)."""
    for group in iter_tar_groups(paths):
        key = group["__key__"]
        ext, data = image_of(group)
        if data is None or "json" not in group:
            raise EcoalignInputError(f"sample {key!r} lacks an image or its .json sidecar", path=group["__url__"],
                                     expected="<key>.jpg|png + <key>.json + <key>.<kind>.txt members")
        meta = json.loads(group["json"])
        yield {"key": key, "image": decode_image(data) if decode else data, "image_ext": ext,
               "taxon": taxon_of(meta), "texts": texts_of(group), "json": meta}


def taxon_of(meta: Mapping):
    from ecoalign.data.taxonomy import Taxon

    return Taxon.from_dict({**meta.get("taxon", {}), "common": meta.get("common")})


def tar_paths(path: str | os.PathLike) -> list[Path]:
    """A .tar, or the .tar files of a directory (sorted)."""
    path = Path(path)
    return sorted(path.glob("*.tar")) if path.is_dir() else [path] if path.is_file() else []


def read_general_pairs(path: str | os.PathLike, *, decode: bool = True) -> Iterator[dict]:
    """General image-text pairs (replay data) from a tar or a directory of tars: dicts key, image, text."""
    paths = tar_paths(path)
    if not paths:
        raise EcoalignInputError("no general image-text pairs found", path=path,
                                 expected="a .tar or a directory of .tar files with <key>.jpg + <key>.txt")
    for group in iter_tar_groups(paths):
        data = image_of(group)[1]
        if data is None or "txt" not in group:
            continue
        yield {"key": group["__key__"], "image": decode_image(data) if decode else data,
               "text": group["txt"].decode()}
