"""Offline tools for etcd snapshots holding Kubernetes objects encrypted at rest."""

from kms_plugin import __version__  # one distribution, one version

__all__ = ["__version__"]
