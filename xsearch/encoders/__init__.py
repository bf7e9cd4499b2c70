"""Encoders: one module per backend, created by name through the registry."""
from .base import Encoder, l2_normalize
from .registry import Backend, backends, create, register

__all__ = ["Encoder", "Backend", "backends", "create", "register", "l2_normalize"]
