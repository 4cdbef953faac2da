"""Writes examples/ecoalign_in_a_notebook.ipynb (run: python examples/make_notebook.py); tests execute it."""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# ecoalign in a notebook

Encoders next to xarray and geopandas: embed plots, fit a species model on the embeddings, map it over a raster
with `ecoalign.map_raster` and with the `da.ecoalign` accessor, and plot the result.

Everything runs on a small generated landscape (`ecoalign.demo.aerial_world`) with **DOFA-small on random
weights** (no model hub here), so it takes well under a minute on a CPU. With real data, point the same calls at
your GeoTIFF and plots, and load pretrained DOFA (`weights="DOFA_MAE"`) or an adapted encoder
(`ecoalign.load_encoder("runs/adapt/<run>")`)."""),
    ("code", """import json
from pathlib import Path

import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import rioxarray

import ecoalign
import ecoalign.accessor  # registers da.ecoalign and gdf.ecoalign
from ecoalign.demo.aerial_world import DEMO_BANDS, generate_demo_world

work = Path("ecoalign-notebook")
world = generate_demo_world(work / "world", n_plots=28, size_m=800.0, resolution_m=4.0, seed=2)
sorted(p.name for p in world.iterdir())"""),
    ("md", """## An encoder, and embeddings of plots

`load_encoder("dofa", ...)` needs the centre wavelength (µm) of each band, in band order. Frozen DOFA
standardises each band with statistics that belong to the encoder, never to the raster being read; they are fixed
here from the whole orthophoto, so plots, crops and maps are embedded alike (left unset, `embed` fixes them once
from the rasters it is given and records them, and a map reuses those of the model's bundle)."""),
    ("code", """from ecoalign.data.patches import band_stats, open_rasters

wavelengths = list(DEMO_BANDS.values())
mean, std = band_stats(open_rasters([world / "ortho.tif"], wavelengths))
encoder = ecoalign.load_encoder("dofa", size="small", wavelengths_um=wavelengths, band_mean=mean, band_std=std)
print(encoder)
plots = gpd.read_file(world / "plots.gpkg", layer="plots")
emb = ecoalign.embed_points(plots, [world / "ortho.tif"], encoder)  # 100 m window around each plot
print(f"{len(emb)} of {len(plots)} plots embedded; skipped: {emb.attrs['ecoalign']['skipped']}")
emb.iloc[:3, :6]"""),
    ("md", """## A species model on the embeddings

A presence/absence model per land cover (standing in for species), cross-validated and saved as the bundle
`ecoalign map` reads; the spec is the same mapping a `species_models/*.yaml` file holds."""),
    ("code", """from ecoalign.sdm.fitting import fit_bundle
from ecoalign.sdm.sites import build_sites
from ecoalign.sdm.spec import spec_from_dict

targets = plots[["plot_id"]].assign(wetland=(plots.landcover == "wetland").astype(int),
                                   grassland=(plots.landcover == "grassland").astype(int))
targets.to_csv(work / "landcover.csv", index=False)
spec = spec_from_dict({"name": "landcover", "task": "presence_absence",
                       "target": {"source": str(work / "landcover.csv"), "min_presences": 3},
                       "features": {"embeddings": True}, "estimator": {"name": "logistic", "params": {"C": 0.1}},
                       "cv": {"scheme": "random", "folds": 2}, "metrics": ["auc"], "bootstrap": 10})
bundle = fit_bundle(spec, build_sites(spec, embeddings=emb), work / "bundle", n_jobs=1, overwrite=True,
                    progress=False)
json.loads((bundle / "bundle.json").read_text())["summary"]"""),
    ("md", """## A map with `map_raster`

The orthophoto opened with rioxarray; a 300 m x 300 m corner of it (with part of the world's nodata strip) is
mapped into a Cloud-Optimized GeoTIFF with one band per target (one pixel per 100 m window; `stride_m=` for a
finer map)."""),
    ("code", """ortho = rioxarray.open_rasterio(world / "ortho.tif")
corner = ortho.isel(x=slice(110, 185), y=slice(0, 75))
corner.rio.to_raster(work / "corner.tif")
map_path = ecoalign.map_raster(encoder, bundle, work / "corner.tif", work / "corner_map.tif", overwrite=True,
                               quicklook=False, progress=False)
mapped = rioxarray.open_rasterio(map_path, masked=True)
print(mapped.rio.crs, mapped.shape, mapped.attrs.get("long_name"))"""),
    ("md", """## The same with the xarray accessor

`da.ecoalign.predict(bundle, encoder)` returns a DataArray (target, y, x), NaN where the input is nodata;
`da.ecoalign.embed(encoder)` the window embeddings (y, x, feature); `gdf.ecoalign.embed(raster, encoder)` the
point embeddings."""),
    ("code", """pred = corner.ecoalign.predict(bundle, encoder, progress=False)
np.testing.assert_array_equal(pred.values, mapped.values)  # the accessor gives what map_raster writes
grid = corner.ecoalign.embed(encoder, progress=False)
some = plots.head(3).ecoalign.embed(ortho, encoder, progress=False)  # the same windows as embed_points
np.testing.assert_allclose(some.set_index("plot_id").filter(like="emb_"),
                           emb.set_index("plot_id").loc[some.plot_id].filter(like="emb_"), rtol=1e-4, atol=1e-4)
pred"""),
    ("code", """fig, axes = plt.subplots(1, 3, figsize=(13, 4))
rgb = corner.sel(band=[3, 2, 1]).transpose("y", "x", "band").astype(float)
axes[0].imshow((rgb / np.nanpercentile(rgb, 99)).clip(0, 1),
               extent=[float(corner.x.min()), float(corner.x.max()), float(corner.y.min()), float(corner.y.max())])
axes[0].set_title("orthophoto (RGB)")
pred.sel(target="wetland").plot(ax=axes[1], vmin=0, vmax=1, cmap="viridis")
axes[1].set_title("P(wetland)")
cells = grid.values.reshape(-1, grid.sizes["feature"])
ok = ~np.isnan(cells).any(axis=1)  # windows that are mostly nodata have no embedding
pcs = np.linalg.svd(cells[ok] - cells[ok].mean(0), full_matrices=False)[0][:, :3]
image = np.ones((len(cells), 3))
image[ok] = (pcs - pcs.min(0)) / (np.ptp(pcs, 0) + 1e-9)
half = grid.attrs["stride_m"] / 2
axes[2].imshow(image.reshape(grid.sizes["y"], grid.sizes["x"], 3),
               extent=[grid.x.min() - half, grid.x.max() + half, grid.y.min() - half, grid.y.max() + half])
axes[2].set_title("embeddings: first 3 principal components")
fig.tight_layout()
fig.savefig(work / "notebook_map.png", dpi=80)"""),
    ("code", """summary = {"encoder_random_weights": encoder.random_weights, "plots_embedded": len(emb),
           "targets": list(pred.target.values), "map_shape": list(pred.shape),
           "nodata_windows": int(np.isnan(pred.values[0]).sum()),
           "embedding_grid": list(grid.shape), "crs": pred.rio.crs.to_string()}
print("ECOALIGN_SUMMARY " + json.dumps(summary))"""),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    out = Path(__file__).with_name("ecoalign_in_a_notebook.ipynb")
    nbformat.write(build(), out)
    print(f"wrote {out}")
