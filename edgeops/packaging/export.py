"""Torch classifier -> ONNX fp32 file whose single output is class probabilities.

We use the torch.export-based exporter (`dynamo=True`, the default since torch 2.9; the
TorchScript exporter is deprecated). For the task models it gives the same small graph
(Gemm/Relu/.../Softmax) that onnxruntime's quantizer handles, and the bytes are identical
from run to run for the same weights.

The task model returns logits; we append a Softmax so the released model returns
probabilities and an agent's confidence is simply the largest one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from edgeops.errors import PackagingError
from edgeops.schemas import InputSchema

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

OPSET_VERSION = 18
OUTPUT_NAME = "probabilities"
BATCH_DIM_NAME = "batch"
# An example batch of 2, not 1: torch.export specialises dimensions of size 1.
_EXAMPLE_BATCH = 2
# torch's exporter logs a warning per missing torchvision op; they say nothing about us.
_NOISY_TORCH_LOGGERS = ("torch.onnx._internal.exporter._registration",)


def export_onnx(
    model: torch.nn.Module,
    input_schema: InputSchema,
    path: Path,
    *,
    opset_version: int = OPSET_VERSION,
) -> Path:
    """Write `model` (logits out) as an ONNX fp32 file with a Softmax head.

    The input is named `input_schema.name` with shape `input_schema.shape` and a dynamic
    batch dimension; the output is named "probabilities". Raises PackagingError when torch
    cannot export the model or the result is not a valid ONNX model.
    """
    import torch

    path = Path(path)
    feature_shape = _feature_shape(input_schema)
    wrapped = _with_softmax(model).eval()
    example = torch.zeros((_EXAMPLE_BATCH, *feature_shape), dtype=torch.float32)
    batch = torch.export.Dim(BATCH_DIM_NAME)
    captured = io.StringIO()
    try:
        with _quiet_exporter(captured), torch.no_grad():
            torch.onnx.export(
                wrapped,
                (example,),
                str(path),
                input_names=[input_schema.name],
                output_names=[OUTPUT_NAME],
                opset_version=opset_version,
                dynamo=True,
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
    except Exception as err:  # torch raises many types here; all mean "cannot export"
        raise PackagingError(f"torch could not export the model to ONNX: {err}") from err
    finally:
        if captured.getvalue():
            logger.debug("torch.onnx output:\n%s", captured.getvalue().rstrip())
    _check_exported(path, input_schema.name)
    logger.info("exported ONNX fp32 model to %s (%d bytes)", path, path.stat().st_size)
    return path


def _feature_shape(input_schema: InputSchema) -> tuple[int, ...]:
    dims = input_schema.shape[1:]
    if not dims or any(dim is None for dim in dims):
        raise PackagingError(
            f"input schema shape {input_schema.shape} must be [None, d1, ...] with fixed d1..."
        )
    return tuple(int(dim) for dim in dims if dim is not None)


def _with_softmax(model: torch.nn.Module) -> torch.nn.Module:
    import torch

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.model = inner
            self.softmax = torch.nn.Softmax(dim=-1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.softmax(self.model(x))

    return WithSoftmax(model)


@contextlib.contextmanager
def _quiet_exporter(sink: io.StringIO) -> Iterator[None]:
    """Keep the exporter's progress prints off stdout (they would break `--json`)."""
    noisy = [logging.getLogger(name) for name in _NOISY_TORCH_LOGGERS]
    levels = [log.level for log in noisy]
    for log in noisy:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for log, level in zip(noisy, levels):
            log.setLevel(level)


def _check_exported(path: Path, input_name: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        graph = onnx.load(str(path), load_external_data=False).graph
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, OSError) as err:
        raise PackagingError(f"the exported ONNX model is not valid: {err}") from err
    inputs = [value.name for value in graph.input]
    outputs = [value.name for value in graph.output]
    if inputs != [input_name] or outputs != [OUTPUT_NAME]:
        raise PackagingError(
            f"exported model has inputs {inputs} and outputs {outputs}; "
            f"expected [{input_name!r}] and [{OUTPUT_NAME!r}]"
        )
