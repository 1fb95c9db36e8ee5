"""The gallery index on disk (numpy, faiss and pydantic only, no torch, so an index loads quickly):
its manifest, the index in memory, its atomic store, an index built from embedding shards, and search
with the model that built it."""
