"""Shared test helpers, one topic per module; pytest fixtures over them live in tests/conftest.py.

* :mod:`.fixtures`: the real-apiserver fixtures, the shipped example, the golden vectors, and
  the helpers that compare what a command wrote with a fixture's manifest;
* :mod:`.cli`: ``snapshot-tools`` and ``kms-plugin`` run in-process or as a subprocess;
* :mod:`.configs`: EncryptionConfigurations written by tests;
* :mod:`.k8s_objects`: stored Secrets and ConfigMaps (Kubernetes protobuf and JSON) built by hand;
* :mod:`.snapshots`: bbolt files and etcd snapshots built without etcd;
* :mod:`.etcd`: real etcd binaries, throwaway servers, ``etcdutl`` status and restore;
* :mod:`.kms`: a KMS v2 test plugin (the peer of our client) and our own plugin served in-process;
* :mod:`.aws`: AWS KMS on a moto server, and a fault-injecting proxy in front of it;
* :mod:`.files`: file identity, temp-file leftovers and special nodes (FIFOs, devices, symlinks).

Test modules import from here, never from each other.
"""
