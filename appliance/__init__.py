"""MLOps Appliance: the engine, headless.

Data flows one way: answers file -> stack (validated, profile applied) -> plan (desired vs
observed) -> apply (runtime calls, events) -> state. This package never imports the TUI, torch or
onnxruntime; workloads that need them live under ``appliance.workloads`` and import them lazily.
"""

__version__ = "0.2.0"
