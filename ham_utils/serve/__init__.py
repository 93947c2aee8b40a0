"""Serving a finished run: prediction of image files with risk levels and Grad-CAM (the command
line and the app), and checked export to ONNX and TFLite.

Imports the stages below it: evaluation (the fitted calibration, thresholds and
out-of-distribution check), explain, runs, model and data.
"""
