"""embedlab: train, compare, evaluate and serve embedding models for image retrieval."""

__version__ = "0.1.0"
