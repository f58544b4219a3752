"""The trainer workload: dataset -> validated split -> PyTorch MLP -> ONNX -> registry.

Run it as ``python -m appliance.workloads.trainer run --dataset NAME`` (see ``__main__``) or
step by step for the retraining pipeline. It reads only the environment the stack injects
(docs/interfaces.md). Importing this package is cheap; torch loads when a step runs.
"""
