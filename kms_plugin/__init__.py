"""A KMS v2 envelope-encryption plugin for kube-apiserver."""

__version__ = "0.1.0"
