"""fer_lab: config-driven facial expression recognition experiments."""

import os

# albumentations otherwise asks the package index for a newer release on every import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from fer_lab.core.config import register_resolvers

register_resolvers()

__version__ = "0.1.0"
