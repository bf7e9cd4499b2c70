"""Vector index layer: FAISS only (no torch, no SQLAlchemy)."""
from .faiss_index import VectorIndex, gpu_count
from .idset import IdSet
from .specs import SPEC_CHOICES, build_index, check_request, outgrown, parse_memory, rebuild

__all__ = ["VectorIndex", "IdSet", "gpu_count", "build_index", "check_request", "outgrown", "parse_memory", "rebuild", "SPEC_CHOICES"]
