"""What runs inside the stack: trainer, ONNX server, controller and their pipelines.

These packages may import torch, onnxruntime and the like; the engine and CLI core must not
import them at module top level.
"""
