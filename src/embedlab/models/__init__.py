"""Embedding models: backbones by name, pooling, necks, and the embedder that assembles them."""

from embedlab.models.backbones import create_backbone
from embedlab.models.embedder import Embedder, build_embedder

__all__ = ["Embedder", "build_embedder", "create_backbone"]
