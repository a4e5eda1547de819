"""Quorum: run one large language model across several machines."""

__version__ = "0.1.0"
