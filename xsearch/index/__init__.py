"""Vector index layer: FAISS only (no torch, no SQLAlchemy)."""
from .faiss_index import VectorIndex, gpu_count

__all__ = ["VectorIndex", "gpu_count"]
