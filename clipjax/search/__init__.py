"""Search with a CLIP checkpoint: an embedding index on disk (shards + metadata + FAISS),
text search, reverse image search, ranking, near-duplicates, and a web page (`web.py`).

    from clipjax import search
    search.build_index("runs/fmnist", "photos/", "photos.index")      # resumable; add_images appends
    idx = search.SearchIndex.open("photos.index", "runs/fmnist")       # refuses another checkpoint
    idx.search(text="a red car at night", k=10)                         # [Result(rank, score, id, key, path, ...)]
    idx.search(image="query.jpg"); idx.search(text="...", image="q.jpg", weight=0.7)
    idx.duplicates(threshold=0.95)                                      # groups of near-duplicates
    search.rank("runs/fmnist", "a sneaker", ["a.png", "b.png"])
"""

from clipjax.search.embedder import Embedder, IndexMismatchError
from clipjax.search.index import Result, SearchIndex, add_images, build_index, rank
from clipjax.search.sheet import contact_sheet
from clipjax.search.store import IndexStore

__all__ = ["Embedder", "IndexMismatchError", "Result", "SearchIndex", "add_images", "build_index", "rank",
           "contact_sheet", "IndexStore"]
