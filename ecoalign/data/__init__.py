"""Data in: manifests, relevé tables, plot files, raster windows, spatial splits and the demo world."""
