"""The data stage: reading and validating the metadata and image folders, the Kaggle download,
the synthetic demo set, the lesion-aware split, image decoding and the uint8 image cache.

Imports only :mod:`ham_utils.config` and :mod:`ham_utils.errors`; never Keras.
"""
