"""Benchmarks that print figures (tests never assert on timing). Run from the repository root:

* ``python -m bench.scan``: the latest view of a big secrets-shaped snapshot (records/s, RSS);
* ``python -m bench.check``: ``snapshot-tools check`` end to end against the crypto floor;
* ``python -m bench.rewrite``: ``snapshot-tools reencrypt`` end to end, to aescbc and to KMS v2;
* ``python -m bench.copy_snapshot``: the bbolt bulk writer rebuilding a big snapshot;
* ``python -m bench.providers``: decryption per provider, objects/s;
* ``python -m bench.plugin``: the KMS plugin's Encrypt/Decrypt against Status over its socket
  (``--flavour aio``: the same service on ``bench.plugin_aio``'s asyncio server);
* ``python -m bench.plugin_aws``: the plugin on AWS KMS (moto), with and without the local KEK.

Snapshots are built once through a real etcd (tests/support/etcd.py) and kept in bench/.cache/;
:mod:`bench.common` holds what the benchmarks share. Each takes ``--help``.
"""
