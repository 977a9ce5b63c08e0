"""glmaas: the GLM General Language Model, and a metered model-as-a-service API for it."""

__version__ = "0.1.0"
