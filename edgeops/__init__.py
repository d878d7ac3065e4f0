"""EdgeOps: edge and federated MLOps.

The core package holds what both sides of the wire agree on: tasks, message schemas and
topics, drift sketches, release metadata, ONNX packaging, and the error hierarchy.
It never imports `agent` or `server`.
"""

__version__ = "0.1.0"
