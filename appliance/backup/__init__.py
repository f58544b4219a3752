"""Backup and restore of everything stateful in a stack (``appliance backup``, ``restore``).

- ``layout``: where each part (MLflow, data, pipeline records, notebooks, secrets) lives for a
  runtime, so one archive restores onto local processes, podman or docker alike;
- ``snapshot``: what is read, SQLite databases through the online backup API;
- ``create``: the archive (tar, gzip, optional encryption), 0600 and atomic;
- ``manifest``: what wrote it and every member's checksum;
- ``crypto``: passphrase (scrypt) or recipient key (X25519) encryption, streamed;
- ``read``: one checked pass over an archive (verify, or restore's staging);
- ``restore``: check everything first, then swap each part in;
- ``store``: the bundled object store started alone while restore uploads into it;
- ``remote``: archives kept in S3.
"""
