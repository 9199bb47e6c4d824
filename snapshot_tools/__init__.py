"""Offline tools for etcd snapshots holding Kubernetes objects encrypted at rest."""

__version__ = "0.1.0"
