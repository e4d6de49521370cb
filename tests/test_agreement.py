"""The same model and inputs through every installed CPU backend give the same answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import MlpiError
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.core.plugins.config import PluginsConfig
from mlpi.core.plugins.options import build_options
from mlpi.core.plugins.registry import Registry
from mlpi.models.resnet50_graph import write_resnet50

REAL_BACKENDS = ("onnxruntime", "openvino", "pytorch")


def installed_backends() -> list[str]:
    registry = Registry(PluginsConfig.load())
    names = []
    for name in REAL_BACKENDS:
        try:
            registry.backend(name).version()
        except MlpiError:
            continue
        names.append(name)
    return names


def run_backend(name: str, model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    backend = Registry(PluginsConfig.load()).backend(name)
    options = build_options(backend.Options, [], name)
    session = backend.load(inspect_onnx(model), Device("cpu"), options, "fp32")
    assert session.precision == "fp32"
    outputs = {}
    for start in range(0, len(x), 8):
        batch = session.run({"input_tensor:0": x[start : start + 8]})
        for key, value in batch.items():
            outputs.setdefault(key, []).append(np.asarray(value))
    session.close()
    return {key: np.concatenate(parts) for key, parts in outputs.items()}


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_resnet50(tmp_path_factory.mktemp("agree") / "r50.onnx", seed=0)


def test_resnet50_top1_agrees_across_cpu_backends(resnet: Path) -> None:
    names = installed_backends()
    if len(names) < 2:
        pytest.skip(f"needs two real CPU backends, found {names}")
    x = np.random.default_rng(11).standard_normal((16, 3, 224, 224)).astype(np.float32) * 60
    results = {name: run_backend(name, resnet, x) for name in names}
    reference = results["onnxruntime"] if "onnxruntime" in results else results[names[0]]
    for name, outputs in results.items():
        agreement = float(np.mean(outputs["ArgMax:0"] == reference["ArgMax:0"]))
        assert agreement >= 0.99, f"{name}: top-1 agrees on {agreement:.0%} of samples"
        np.testing.assert_allclose(outputs["softmax_tensor:0"], reference["softmax_tensor:0"], rtol=1e-3, atol=1e-4,
                                   err_msg=name)
    assert len(set(reference["ArgMax:0"].tolist())) > 3  # the comparison means something
