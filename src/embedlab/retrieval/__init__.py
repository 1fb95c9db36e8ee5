"""Search over embeddings: exact (chunked, bounded memory) and through faiss indexes, with recall.

Modules: `arrays` (input checks), `exclusions` (what each query must not see), `threads`, `topk` (the
tie rule), `exact` (exact search), `faiss_index` (faiss indexes from one spec, sharded or not), `search`
(exact or approximate kNN), `recall` (an index's recall against exact search); post-processing:
`postprocessing` (the step registry over `expansion`, `reranking`, `whitening`), `ensemble`.
"""

from embedlab.retrieval.arrays import SimilarityMetric, l2_normalize, prepare_embeddings
from embedlab.retrieval.exact import (
    DEFAULT_MAX_MEMORY_BYTES,
    SimilarityBlock,
    exact_neighbours,
    iter_similarity_blocks,
)
from embedlab.retrieval.exclusions import Exclusions, make_exclusions
from embedlab.retrieval.faiss_index import (
    INDEX_KINDS,
    IndexKind,
    IndexOptions,
    ShardedIndexBuilder,
    build_index,
    empty_index,
)
from embedlab.retrieval.recall import RecallRecord, approximate_recall, measure_recall
from embedlab.retrieval.search import SearchMethod, iter_neighbour_blocks, iter_search, search
from embedlab.retrieval.topk import NeighbourBlock, Workspace, top_k, top_k_indices

__all__ = [
    "DEFAULT_MAX_MEMORY_BYTES",
    "INDEX_KINDS",
    "Exclusions",
    "IndexKind",
    "IndexOptions",
    "NeighbourBlock",
    "RecallRecord",
    "SearchMethod",
    "ShardedIndexBuilder",
    "SimilarityBlock",
    "SimilarityMetric",
    "Workspace",
    "approximate_recall",
    "build_index",
    "empty_index",
    "exact_neighbours",
    "iter_neighbour_blocks",
    "iter_search",
    "iter_similarity_blocks",
    "l2_normalize",
    "make_exclusions",
    "measure_recall",
    "prepare_embeddings",
    "search",
    "top_k",
    "top_k_indices",
]
