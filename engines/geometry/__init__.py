"""Face geometry: landmark trackers, the per-avatar face model, crops, masks and the face-shape raster."""
