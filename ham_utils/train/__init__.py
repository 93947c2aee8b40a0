"""The training stage: augmentation (MixUp/CutMix), the input streams, the two-phase training
loop that writes a run folder, and MLflow tracking.

Imports the stages below it: data, model, figures, :mod:`ham_utils.runs`.
"""
