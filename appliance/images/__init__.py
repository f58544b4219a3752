"""Container images of the appliance: what each one holds, and how it is built and listed.

Images are built from ``images/<name>/Containerfile`` on a local Debian base with a wheelhouse as
the only package source, so a build works without a registry and the same wheelhouse travels in
offline bundles. Building goes through podman (buildah supports ``RUN --mount``); docker receives
the result with ``podman save | docker load``, so both runtimes run byte-identical images.
"""
