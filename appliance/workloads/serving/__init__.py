"""The ONNX model server: KServe Open Inference Protocol v2 over REST and gRPC.

Modules: ``server`` (wiring and lifecycle), ``http_server`` + ``rest_app`` + ``rest_codec`` (REST),
``grpc_server`` (gRPC), ``service`` (shared request pipeline, auth, metrics), ``repository``
(load/unload/hot reload), ``batcher`` (dynamic batching), ``model`` (ONNX Runtime session),
``sources`` (local, S3, MLflow), ``drift`` (PSI), ``metrics`` (Prometheus), ``tensors`` (datatypes).
Nothing here is imported by the CLI core until ``appliance serve`` runs.
"""
