"""A small ONNX -> PyTorch converter: an ``nn.Module`` that walks the ONNX graph with torch ops.

Why not ``onnx2torch`` (PyPI 1.5.15)? It imports ``torchvision`` when it is imported
(``onnx2torch/node_converters/nms.py``), and torchvision wheels are built against one exact
torch release: PyPI's torchvision does not import beside the torch mlpi is tested with, and
installing a matching one would pull in another torch. A backend that depends on that pin
breaks whenever the two drift. So this package converts ONNX's standard operators itself,
with torch only, measured by the conformance kit's ONNX node-test tier
(``python -m mlpi.testing.conformance --backend pytorch --onnx-node-tests``).

Every operator follows its ONNX spec for the opsets the node tests use, as onnxruntime's CPU
kernels compute it where the spec leaves a choice (TopK's tie order, NonMaxSuppression's
selection, Resize's rounding). An attribute value, type or input it does not implement
raises :class:`~mlpi.core.contract.errors.ModelError` naming the node and what it has, never
an approximation; an operator it does not know raises :class:`UnsupportedOperators` naming
every unknown operator of the graph at once.

Layout: :mod:`.node` (what a builder sees of a node), :mod:`.module` (the graph as a module),
:mod:`.registry` (op type -> builder) and one ``ops_*`` module per family of operators.
"""

from mlpi.backends.onnx_to_torch.module import OnnxModule, UnsupportedOperators, convert
from mlpi.backends.onnx_to_torch.node import NUMPY_TO_TORCH, TORCH_DTYPES
from mlpi.backends.onnx_to_torch.registry import SUPPORTED_OPS

__all__ = ["NUMPY_TO_TORCH", "SUPPORTED_OPS", "TORCH_DTYPES", "OnnxModule", "UnsupportedOperators", "convert"]
