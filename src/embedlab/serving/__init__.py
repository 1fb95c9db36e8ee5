"""Deploying a trained model: the gallery index on disk, search, the open-set threshold, the HTTP API
and its page, and ONNX export.

The modules are imported by name (`embedlab.serving.index`, ...) so that reading an index does not
import torch.
"""
