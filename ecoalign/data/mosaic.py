"""Many tiles as one raster: a list of GeoTIFFs, a glob (``tiles/*.tif``) or a GDAL VRT, read as one mosaic.

Tiles are checked before any work (each readable, georeferenced; all in one CRS, with the same band count, data
type and resolution, on one pixel grid) and joined by a GDAL VRT that this module writes itself as XML (GDAL's
Python bindings, ``osgeo.gdal.BuildVRT``, are not a dependency). Reading a window of the VRT with rasterio reads
whatever tiles it crosses, so windows across tile edges are seamless. Pixels between tiles, and each tile's own
nodata, are the VRT's nodata: the tiles' common nodata value, else NaN (the VRT is then Float32).

The VRT is written once into the cache (``ecoalign.core.paths.cache_dir() / "mosaics"``) under a name made from
the tiles' paths, sizes and modification times, so a resumed run finds the same file.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape

from ecoalign.core.errors import EcoalignInputError

log = logging.getLogger(__name__)

GLOB_CHARS = set("*?[")
GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def is_glob(value) -> bool:
    return isinstance(value, str) and bool(GLOB_CHARS & set(value))


def expand_tiles(raster, flag: str = "--raster") -> list[Path]:
    """The tile paths of a raster argument: a path (a GeoTIFF or a .vrt: one entry), a glob, or a list of
    either; a glob that matches nothing and a missing file are errors naming ``flag``."""
    items = list(raster) if isinstance(raster, (list, tuple)) else [raster]
    if not items:
        raise EcoalignInputError(f"{flag}: no raster given", expected="a GeoTIFF, a .vrt, a glob or a list of tiles")
    tiles: list[Path] = []
    for item in items:
        if is_glob(str(item)) and not Path(str(item)).exists():
            matched = sorted(globlib.glob(os.path.expanduser(str(item))))
            if not matched:
                raise EcoalignInputError(f"{flag} '{item}' matches no file", path=str(item),
                                         expected="a glob that matches GeoTIFF tiles (quote it so the shell leaves it)")
            tiles += [Path(m) for m in matched]
        else:
            p = Path(str(item)).expanduser()
            if not p.exists():
                raise EcoalignInputError(f"{flag}: raster not found", path=p)
            tiles.append(p)
    return tiles


def _tile_info(path: Path) -> dict:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            info = {"path": str(path.resolve()), "crs": src.crs, "count": src.count, "dtype": src.dtypes[0],
                    "transform": src.transform, "width": src.width, "height": src.height, "nodata": src.nodata,
                    "bounds": tuple(src.bounds), "descriptions": src.descriptions,
                    "block": src.block_shapes[0] if src.block_shapes else (256, 256)}
            src.read(1, window=((0, 1), (0, 1)))  # the header alone does not prove the pixels are readable
    except RasterioIOError as exc:
        raise EcoalignInputError(f"cannot read the tile: {exc}", path=path,
                                 expected="a readable GeoTIFF (copy or download it again, or leave it out)") from exc
    if info["crs"] is None:
        raise EcoalignInputError("the tile has no CRS", path=path,
                                 expected="georeferenced tiles (assign one with gdal_edit.py -a_srs EPSG:XXXX)")
    t = info["transform"]
    if t.b or t.d:
        raise EcoalignInputError("the tile is rotated", path=path, expected="north-up tiles (gdalwarp them first)")
    return info


def check_tiles(tiles: Sequence[Path]) -> list[dict]:
    """Every tile readable; all in one CRS, with the same bands, data type and resolution, on one pixel grid.
    The first tile is the reference; an offending tile is named with the GDAL command that fixes it."""
    infos = [_tile_info(Path(t)) for t in tiles]
    ref = infos[0]
    epsg = ref["crs"].to_string()
    res = (ref["transform"].a, ref["transform"].e)
    for info in infos[1:]:
        p = info["path"]
        if info["crs"] != ref["crs"]:
            raise EcoalignInputError(
                f"the tile is in {info['crs'].to_string()} but {Path(ref['path']).name} is in {epsg}", path=p,
                expected=f"all tiles in one CRS: gdalwarp -t_srs {epsg} -tr {abs(res[0]):g} {abs(res[1]):g} -tap "
                         f"{Path(p).name} {Path(p).stem}_{epsg.replace(':', '')}.tif")
        if info["count"] != ref["count"]:
            raise EcoalignInputError(
                f"the tile has {info['count']} bands but {Path(ref['path']).name} has {ref['count']}", path=p,
                expected="the same bands in every tile (select them with gdal_translate -b 1 -b 2 ...)")
        tr = info["transform"]
        if not (math.isclose(tr.a, res[0], rel_tol=1e-9) and math.isclose(tr.e, res[1], rel_tol=1e-9)):
            raise EcoalignInputError(
                f"the tile has {abs(tr.a):g} x {abs(tr.e):g} pixels but {Path(ref['path']).name} has "
                f"{abs(res[0]):g} x {abs(res[1]):g}", path=p,
                expected=f"one resolution: gdalwarp -tr {abs(res[0]):g} {abs(res[1]):g} -tap -r bilinear "
                         f"{Path(p).name} {Path(p).stem}_resampled.tif")
        dc = (tr.c - ref["transform"].c) / res[0]
        dr = (tr.f - ref["transform"].f) / res[1]
        if abs(dc - round(dc)) > 1e-6 or abs(dr - round(dr)) > 1e-6:
            raise EcoalignInputError(
                f"the tile is not on the pixel grid of {Path(ref['path']).name} (offset by {dc - round(dc):+.3f}, "
                f"{dr - round(dr):+.3f} pixels)", path=p,
                expected=f"tiles on one grid: gdalwarp -tr {abs(res[0]):g} {abs(res[1]):g} -tap "
                         f"{Path(p).name} {Path(p).stem}_aligned.tif")
        if info["dtype"] != ref["dtype"]:
            raise EcoalignInputError(f"the tile stores {info['dtype']} but {Path(ref['path']).name} {ref['dtype']}",
                                     path=p, expected=f"one data type: gdal_translate -ot {GDAL_TYPES.get(ref['dtype'], ref['dtype'])}")
    return infos


def mosaic_vrt_xml(infos: Sequence[dict]) -> str:
    """The VRT of checked tiles (``check_tiles``): the union of their extents on the first tile's grid."""
    ref = infos[0]
    a, e = ref["transform"].a, ref["transform"].e
    left = min(i["bounds"][0] for i in infos)
    top = max(i["bounds"][3] for i in infos)
    right = max(i["bounds"][2] for i in infos)
    bottom = min(i["bounds"][1] for i in infos)
    width, height = round((right - left) / a), round((bottom - top) / e)
    nodatas = {i["nodata"] for i in infos}
    common = next(iter(nodatas)) if len(nodatas) == 1 else None
    if common is not None and not (isinstance(common, float) and math.isnan(common)):
        dtype, nodata = GDAL_TYPES[ref["dtype"]], repr(float(common))
    else:  # no common nodata value: gaps and each tile's nodata become NaN
        dtype, nodata = ("Float64" if ref["dtype"] == "float64" else "Float32"), "nan"
    overlaps = _overlaps(infos)
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"  <SRS>{escape(ref['crs'].to_wkt())}</SRS>",
             f"  <GeoTransform>{left!r}, {a!r}, 0.0, {top!r}, 0.0, {e!r}</GeoTransform>"]
    for b in range(1, ref["count"] + 1):
        lines.append(f'  <VRTRasterBand dataType="{dtype}" band="{b}">')
        lines.append(f"    <NoDataValue>{nodata}</NoDataValue>")
        desc = ref["descriptions"][b - 1] if ref["descriptions"] else None
        if desc:
            lines.append(f"    <Description>{escape(desc)}</Description>")
        for i in infos:
            xoff, yoff = round((i["bounds"][0] - left) / a), round((i["bounds"][3] - top) / e)
            by, bx = i["block"]
            # a tile whose nodata is the mosaic's (or that has none) and overlaps no other: a plain copy (faster);
            # otherwise its nodata pixels are made transparent (ComplexSource NODATA)
            complex_ = i["nodata"] is not None and (overlaps or nodata == "nan" or float(i["nodata"]) != float(nodata))
            kind = "ComplexSource" if complex_ else "SimpleSource"
            lines += [f"    <{kind}>",
                      f'      <SourceFilename relativeToVRT="0">{escape(i["path"])}</SourceFilename>',
                      f"      <SourceBand>{b}</SourceBand>",
                      f'      <SourceProperties RasterXSize="{i["width"]}" RasterYSize="{i["height"]}" '
                      f'DataType="{GDAL_TYPES[i["dtype"]]}" BlockXSize="{bx}" BlockYSize="{by}" />',
                      f'      <SrcRect xOff="0" yOff="0" xSize="{i["width"]}" ySize="{i["height"]}" />',
                      f'      <DstRect xOff="{xoff}" yOff="{yoff}" xSize="{i["width"]}" ySize="{i["height"]}" />']
            if complex_:  # the tile's nodata stays transparent: the mosaic's nodata (or an earlier tile) shows
                lines.append(f"      <NODATA>{'nan' if math.isnan(i['nodata']) else repr(float(i['nodata']))}</NODATA>")
            lines.append(f"    </{kind}>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def _overlaps(infos: Sequence[dict]) -> bool:
    """Whether any two tiles overlap (by more than a hundredth of a pixel)."""
    import numpy as np

    b = np.array([i["bounds"] for i in infos], dtype=np.float64)  # left, bottom, right, top
    eps = 0.01 * abs(infos[0]["transform"].a)
    ox = (np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])) > eps
    oy = (np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])) > eps
    both = ox & oy
    np.fill_diagonal(both, False)
    return bool(both.any())


def _tiles_key(tiles: Sequence[Path]) -> str:
    parts = []
    for t in tiles:
        st = os.stat(t)
        parts.append([str(Path(t).resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def resolve_raster(raster, flag: str = "--raster") -> tuple[Path, list[str]]:
    """(path to read, tile paths) for a raster argument. One GeoTIFF or .vrt: itself and no tiles. Several tiles
    (a glob or a list): all checked first (``check_tiles``), then a VRT mosaic of them, written once to the
    cache. Nothing is written when a tile is refused."""
    from ecoalign.core.io import write_text
    from ecoalign.core.paths import cache_dir

    tiles = expand_tiles(raster, flag)
    if len(tiles) == 1:
        if tiles[0].suffix.lower() == ".vrt":
            _check_vrt_sources(tiles[0])
        return tiles[0], []
    infos = check_tiles(tiles)
    vrt = cache_dir() / "mosaics" / f"mosaic-{_tiles_key(tiles)}.vrt"
    if not vrt.exists():
        vrt.parent.mkdir(parents=True, exist_ok=True)
        write_text(vrt, mosaic_vrt_xml(infos))
        log.info("mosaic of %d tiles (%s ...): %s", len(tiles), tiles[0].name, vrt)
    return vrt, [i["path"] for i in infos]


def _check_vrt_sources(vrt: Path) -> None:
    """A user's VRT: every source file it names exists and is readable (checked before any work)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(vrt).getroot()
    except (ET.ParseError, OSError) as exc:
        raise EcoalignInputError(f"cannot parse the VRT: {exc}", path=vrt, expected="a GDAL VRT (gdalbuildvrt)") from exc
    names = []
    for el in root.iter("SourceFilename"):
        name = (el.text or "").strip()
        if el.get("relativeToVRT") == "1":
            name = str(vrt.parent / name)
        if name and name not in names:
            names.append(name)
    for name in names:
        if not name.startswith("/vsi") and not Path(name).exists():
            raise EcoalignInputError(f"the VRT names a tile that does not exist: {name}", path=vrt,
                                     expected="a VRT whose tiles are all present (rebuild it with gdalbuildvrt)")
        if not name.startswith("/vsi"):
            _tile_info(Path(name))
