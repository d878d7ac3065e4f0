"""Model packaging: a trained task model -> ONNX fp32 -> int8 -> evaluated, gated package.

    package_model()          the whole pipeline; writes model.fp32.onnx, model.int8.onnx and
                             report.json into a fresh directory, or nothing at all
    export_onnx()            torch module -> ONNX fp32 file with a Softmax head
    quantize_onnx()          ONNX fp32 -> int8 (static QDQ or dynamic)
    evaluate_pair()          accuracy, fp32/int8 agreement, p50 latency, sizes (onnxruntime)
    check_accuracy_gate()    the int8 accuracy budget, as a pure check
    monitoring_reference()   held-out histograms, class x confidence and calibration map
                             of one exported model, for the fleet monitor (pure)

torch, onnx and onnxruntime are imported inside the functions that use them, never at import
time, so importing this package stays cheap (the agent imports `edgeops`).
"""

from __future__ import annotations

from edgeops.packaging.evaluate import (
    FormatEvaluation,
    PairEvaluation,
    evaluate_pair,
    p50_latency_us,
    run_model,
    top1_agreement,
)
from edgeops.packaging.export import OPSET_VERSION, OUTPUT_NAME, export_onnx
from edgeops.packaging.gate import check_accuracy_gate
from edgeops.packaging.golden import GOLDEN_ATOL_FLOOR, build_golden, golden_atol
from edgeops.packaging.monitoring import calibration_map, monitoring_reference
from edgeops.packaging.package import (
    FP32_FILE,
    INT8_FILE,
    REPORT_FILE,
    PackageReport,
    ProgressCallback,
    package_model,
)
from edgeops.packaging.quantize import QuantizationConfig, QuantizationMethod, quantize_onnx
from edgeops.packaging.source import SourceModel, load_checkpoint, train_model

__all__ = [
    "FP32_FILE",
    "GOLDEN_ATOL_FLOOR",
    "INT8_FILE",
    "OPSET_VERSION",
    "OUTPUT_NAME",
    "REPORT_FILE",
    "FormatEvaluation",
    "PackageReport",
    "PairEvaluation",
    "ProgressCallback",
    "QuantizationConfig",
    "QuantizationMethod",
    "SourceModel",
    "build_golden",
    "calibration_map",
    "check_accuracy_gate",
    "evaluate_pair",
    "export_onnx",
    "golden_atol",
    "load_checkpoint",
    "monitoring_reference",
    "p50_latency_us",
    "package_model",
    "quantize_onnx",
    "run_model",
    "top1_agreement",
    "train_model",
]
