"""The explanation stage: Grad-CAM heatmaps and overlays, for given images and as per-class grids
of a run's test images.

Imports the stages below it (data, model, figures, runs); beside evaluation, not on top of it.
"""
