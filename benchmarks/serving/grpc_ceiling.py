"""A gRPC server that answers ModelInfer with a canned response and does nothing else.

It measures the ceiling of the transport itself (grpcio server + the Python load client on the
same cores): no server built on grpcio can beat this row, so it shows how much of each gRPC
figure is the protocol stack rather than the model server.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc


class Canned(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.response = pb.ModelInferResponse(model_name="mlp", model_version="1")
        out = self.response.outputs.add(name="probabilities", datatype="FP32", shape=[1, 2])
        out.contents.fp32_contents.extend([0.5, 0.5])

    async def ModelInfer(self, request: object, context: object) -> object:
        return self.response


async def main(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Canned(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
