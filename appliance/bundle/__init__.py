"""Offline bundles: every image a profile runs, the wheelhouse and the stack files, in one tar
with a manifest of sha256 hashes, so an air-gapped machine installs exactly what was tested."""
