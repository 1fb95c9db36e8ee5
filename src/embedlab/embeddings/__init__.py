"""Embeddings on disk: shards written by `embedlab embed`, read one at a time."""
