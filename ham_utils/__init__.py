"""Helpers behind the HAM10000 skin-lesion notebooks."""

from ham_utils.config import CLASS_NAMES, CLASSES, RISK_GROUPS

__all__ = ["CLASSES", "CLASS_NAMES", "RISK_GROUPS", "__version__"]
__version__ = "0.1.0"
