"""The model stage: networks built from the backbone registry of :mod:`ham_utils.config`
(Keras applications and EfficientNet-Lite with its ImageNet weight reader), the losses and the
training metrics.

Imports only :mod:`ham_utils.config` and :mod:`ham_utils.errors`; knows nothing of data,
runs or training.
"""
