"""Metadata store: SQLAlchemy only (no FAISS)."""
from .repo import ItemRecord, ItemRow, Store

__all__ = ["ItemRecord", "ItemRow", "Store"]
