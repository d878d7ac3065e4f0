"""Real int8 digits models for delta tests: a release, its warm-started retrain, and an
unrelated model, trained, exported and quantized as `edgeops model package` does."""

from __future__ import annotations

import copy
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DeltaModels:
    base: Path  # int8 of the first release
    retrain: Path  # int8 of a warm-started retrain of it
    unrelated: Path  # int8 of a model trained from another seed


def build_delta_models(directory: Path, *, epochs: int = 8, retrain_epochs: int = 2) -> DeltaModels:
    import numpy as np
    import torch

    from edgeops.packaging.export import export_onnx
    from edgeops.packaging.quantize import QuantizationConfig, quantize_onnx
    from edgeops.tasks.base import TrainConfig
    from edgeops.tasks.digits import digits

    directory.mkdir(parents=True, exist_ok=True)
    dataset = digits.load_data()
    calibration = digits.calibration_data(dataset)

    def package(model: torch.nn.Module, name: str) -> Path:
        fp32, int8 = directory / f"{name}.fp32.onnx", directory / f"{name}.int8.onnx"
        export_onnx(model.eval(), digits.input_schema, fp32)
        quantize_onnx(fp32, int8, input_name=digits.input_schema.name,
                      config=QuantizationConfig(), calibration=calibration)  # fmt: skip
        return int8

    def trained(seed: int, start: torch.nn.Module | None, config: TrainConfig) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = copy.deepcopy(start) if start is not None else digits.make_model()
            # A retrain sees the data it started from plus fresh data: here a shuffle.
            order = np.random.default_rng(seed).permutation(len(dataset.x_train))
            digits.train(model.train(), dataset.x_train[order], dataset.y_train[order], config)
        return model.eval()

    first = trained(0, None, TrainConfig(epochs=epochs, seed=0))
    retrain = trained(1, first, TrainConfig(epochs=retrain_epochs, seed=1, learning_rate=2e-4))
    other = trained(7, None, TrainConfig(epochs=epochs, seed=7))
    return DeltaModels(package(first, "base"), package(retrain, "retrain"), package(other, "other"))


@functools.cache
def delta_models() -> DeltaModels:
    """The models, built once per test process (training takes a few seconds)."""
    return build_delta_models(Path(tempfile.mkdtemp(prefix="edgeops-delta-models-")))


def write_package(directory: Path, int8: Path, *, code_version: str = "delta-test") -> Path:
    """A package folder (as `edgeops model package` writes it) around `int8` and its fp32
    sibling, golden vectors measured here; publish it with `publish_package`."""
    import hashlib
    import json
    import shutil

    import numpy as np

    from edgeops.packaging.golden import build_golden
    from edgeops.tasks.digits import digits

    directory.mkdir(parents=True, exist_ok=True)
    fp32 = int8.with_name(int8.name.replace(".int8.", ".fp32."))
    files = {"fp32": directory / "model.fp32.onnx", "int8": directory / "model.int8.onnx"}
    shutil.copyfile(fp32, files["fp32"])
    shutil.copyfile(int8, files["int8"])
    schema = digits.input_schema.model_dump(mode="json")
    inputs = np.random.default_rng(0).uniform(0, 16, (4, 64)).astype(np.float32)
    release_info = {}
    for fmt, path in files.items():
        golden, _ = build_golden(path, inputs, fmt, input_name=digits.input_schema.name)  # type: ignore[arg-type]
        release_info[fmt] = {
            "schema": 1, "model": "digits", "format": fmt, "input": schema,
            "output_name": "probabilities", "num_classes": digits.num_classes,
            "golden": golden.model_dump(mode="json"),
        }  # fmt: skip
    report = {
        "sha256": {f: hashlib.sha256(p.read_bytes()).hexdigest() for f, p in files.items()},
        "model": "digits",
        "task": "edgeops.tasks.digits:digits",
        "release_info": release_info,
        "metrics": {"fp32": {"accuracy": 0.97}, "int8": {"accuracy": 0.96}},
        "lineage": {"data_fingerprint": "a" * 64, "code_version": code_version},
    }
    (directory / "report.json").write_text(json.dumps(report))
    return directory
