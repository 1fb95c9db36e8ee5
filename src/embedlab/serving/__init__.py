"""Deploying an index: the HTTP API and its page, the open-set threshold, and ONNX export.

The gallery index itself (manifest, store, search) lives in `embedlab.index`, which needs no torch.
"""
