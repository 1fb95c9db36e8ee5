"""Embeddings: the one embedding pipeline (models, ensemble members, test-time views) that evaluation,
indexing and serving share, and the shard files `embedlab embed` writes, read one at a time."""
