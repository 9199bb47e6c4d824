"""A KMS v2 envelope-encryption plugin for kube-apiserver."""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "k8s-secrets-at-rest"  # both packages ship in this one distribution

try:
    __version__ = version(DISTRIBUTION)  # one source of truth: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
