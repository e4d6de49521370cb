"""RNN-T's three ONNX graphs (encoder, prediction, joint), from the official checkpoint's
weights or from seeded random ones.

Followed: MLCommons inference ``retired_benchmarks/speech_recognition/rnnt`` (tag v4.0):
``pytorch/model_separable_rnnt.py`` (``Encoder``, ``Prediction``, ``Joint``),
``pytorch/rnn.py`` (``LstmDrop``, ``StackTime``), ``pytorch/configs/rnnt.toml`` and the
reference SUT's checkpoint loading (``checkpoint["state_dict"]``, ``joint_net`` renamed
``joint.net``, the featurizer's ``fb`` and ``window`` buffers dropped). No ONNX of the model
is published, so the graphs are written here with onnx + numpy from a state dict in the
reference's names and PyTorch's layouts (torch is needed only to read the checkpoint).

Graphs (opset 17), every tensor batch-first so a pipeline can gather and scatter rows:

* ``encoder``: ``features`` float32 [N, T, 240] (spliced log-mel frames, 30 ms apart) and
  ``feature_lengths`` int64 [N] -> ``encoded`` float32 [N, ceil(T/2), 1024]. Two LSTM
  layers (240 -> 1024), the frames past each utterance's length set to zero (the reference
  runs one utterance at a time, so its time stacking pads with zeros: a batch padded at the
  end gives the same valid frames), time stacking x2 (pairs of frames concatenated, an odd
  count padded with a zero frame), three LSTM layers (2048 -> 1024).
* ``prediction``: ``symbol`` int64 [N, 1], ``hidden`` and ``cell`` float32 [N, 2, 320] ->
  ``g`` float32 [N, 320], ``hidden_out``, ``cell_out``. The embedding table has the
  reference's 28 rows plus a zero row at index 28 (:data:`SOS`): the reference feeds a zero
  vector instead of an embedding before the first symbol, which this row reproduces.
* ``joint``: ``f`` float32 [N, 1024] (one encoder frame), ``g`` [N, 320] -> ``logits``
  [N, 29]: Linear(1344 -> 512) over [f, g], ReLU, Linear(512 -> 29). Index 28 is blank.

ONNX LSTM gates are ordered i, o, f, c and PyTorch's i, f, g, o: the weights are reordered
and the two biases concatenated (``B = [b_ih, b_hh]``).

Random weights (:func:`random_weights`): PyTorch's default initialisation for LSTM and
Linear (uniform +-1/sqrt(fan)), the reference's forget-gate bias (1.0 in ``b_ih``, 0 in
``b_hh``), a normal embedding, from one seeded ``numpy.random.default_rng``. Performance
only: the transcripts mean nothing. Random logits barely vary (std ~0.006), so the greedy
decode is all or nothing: with the plain weights some non-blank symbol always wins and every
frame emits the cap of 30 symbols (30 joint and 30 prediction runs a frame, 15 times the
trained model's ~2 joint runs a frame on speech); :data:`RANDOM_BLANK_BIAS` makes blank win
instead, so every frame is one joint run and the transcripts are empty. The encoder, the
same work as the real model's, dominates either way on CPU; for the decode loop's own cost
see ``benchmarks/rnnt_decode.py``, which uses graphs that emit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.results.rundir import write_bytes_atomic

#: Bump when the graphs or the random weights change, so cached copies are rebuilt.
GRAPH_VERSION = 1
OPSET = 17
IR_VERSION = 8
ROLES = ("encoder", "prediction", "joint")


@dataclass(frozen=True)
class RnntConfig:
    """The reference's ``[rnnt]`` section and vocabulary (``configs/rnnt.toml``)."""

    features: int = 240  # 80 mel filters x frame splicing 3
    encoder_hidden: int = 1024
    pre_layers: int = 2
    stack_factor: int = 2
    post_layers: int = 3
    pred_hidden: int = 320
    pred_layers: int = 2
    joint_hidden: int = 512
    labels: int = 28  # " ", a-z, "'"; blank is index 28

    @property
    def classes(self) -> int:
        return self.labels + 1


CONFIG = RnntConfig()
BLANK = CONFIG.labels
#: The prediction graph's "no symbol yet" index: a zero embedding row.
SOS = CONFIG.labels
#: Added to the random joint's blank logit (see the module docstring).
RANDOM_BLANK_BIAS = 1.0

# Graph tensor names.
FEATURES, FEATURE_LENGTHS, ENCODED = "features", "feature_lengths", "encoded"
SYMBOL, HIDDEN, CELL, G, HIDDEN_OUT, CELL_OUT = "symbol", "hidden", "cell", "g", "hidden_out", "cell_out"
F, LOGITS = "f", "logits"


def expected_shapes(config: RnntConfig = CONFIG) -> dict[str, tuple[int, ...]]:
    """Every weight the graphs need, in the reference's state-dict names and torch layouts."""
    shapes: dict[str, tuple[int, ...]] = {}

    def lstm(prefix: str, inputs: int, hidden: int, layers: int) -> None:
        for layer in range(layers):
            size = inputs if layer == 0 else hidden
            shapes[f"{prefix}.weight_ih_l{layer}"] = (4 * hidden, size)
            shapes[f"{prefix}.weight_hh_l{layer}"] = (4 * hidden, hidden)
            shapes[f"{prefix}.bias_ih_l{layer}"] = (4 * hidden,)
            shapes[f"{prefix}.bias_hh_l{layer}"] = (4 * hidden,)

    h = config.encoder_hidden
    lstm("encoder.pre_rnn.lstm", config.features, h, config.pre_layers)
    lstm("encoder.post_rnn.lstm", config.stack_factor * h, h, config.post_layers)
    shapes["prediction.embed.weight"] = (config.labels, config.pred_hidden)
    lstm("prediction.dec_rnn.lstm", config.pred_hidden, config.pred_hidden, config.pred_layers)
    shapes["joint.net.0.weight"] = (config.joint_hidden, h + config.pred_hidden)
    shapes["joint.net.0.bias"] = (config.joint_hidden,)
    shapes["joint.net.3.weight"] = (config.classes, config.joint_hidden)
    shapes["joint.net.3.bias"] = (config.classes,)
    return shapes


def random_weights(seed: int, config: RnntConfig = CONFIG) -> dict[str, np.ndarray]:
    """Seeded weights with the reference's shapes (see the module docstring)."""
    rng = np.random.default_rng(seed)
    shapes = expected_shapes(config)
    weights: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name == "prediction.embed.weight":
            value = rng.standard_normal(shape)
        else:
            # torch: an LSTM draws every tensor from +-1/sqrt(hidden), a Linear from +-1/sqrt(in).
            fan = shape[0] // 4 if ".lstm." in name else shapes[name.replace("bias", "weight")][1]
            bound = 1.0 / np.sqrt(fan)
            value = rng.uniform(-bound, bound, shape)
        weights[name] = value.astype(np.float32)
    for name, value in weights.items():
        if ".lstm.bias_" in name:
            hidden = value.shape[0] // 4
            value[hidden : 2 * hidden] = 1.0 if "bias_ih" in name else 0.0
    weights["joint.net.3.bias"][BLANK] += RANDOM_BLANK_BIAS
    return weights


def checkpoint_weights(state_dict: Mapping[str, Any], config: RnntConfig = CONFIG) -> dict[str, np.ndarray]:
    """The graphs' weights from the official checkpoint's ``state_dict`` (tensors or arrays),
    migrated as the reference SUT does; ``ValueError`` naming what is missing or misshapen."""
    migrated: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        name = key.removeprefix("module.").replace("joint_net", "joint.net")
        if name.startswith("audio_preprocessor."):
            continue
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        migrated[name] = array
    shapes = expected_shapes(config)
    missing = [name for name in shapes if name not in migrated]
    if missing:
        raise ValueError(f"the checkpoint has no {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    wrong = [f"{name} {tuple(migrated[name].shape)} (expected {shape})" for name, shape in shapes.items()
             if tuple(migrated[name].shape) != shape]
    if wrong:
        raise ValueError(f"checkpoint tensors of the wrong shape: {'; '.join(wrong[:3])}")
    return {name: np.ascontiguousarray(migrated[name], dtype=np.float32) for name in shapes}


# --------------------------------------------------------------------------- graph writing


def _onnx_gates(matrix: np.ndarray) -> np.ndarray:
    """PyTorch's (i, f, g, o) blocks along axis 0 in ONNX's (i, o, f, c) order."""
    i, f, g, o = np.split(matrix, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


class GraphWriter:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer (one per name: a second call with the same name reuses the first)."""
        if any(t.name == name for t in self.initializers):
            return name
        # (np.ascontiguousarray would turn a 0-d scalar into shape [1].)
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, **attrs: Any) -> list[str]:
        self._count += 1
        names = outputs if isinstance(outputs, list) else [f"{op.lower()}_{self._count}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{op}_{self._count}", **attrs))
        return names

    def one(self, op: str, inputs: list[str], **attrs: Any) -> str:
        return self.node(op, inputs, 1, **attrs)[0]

    def lstm(self, x: str, weights: Mapping[str, np.ndarray], prefix: str, layer: int,
             initial: tuple[str, str] | None = None) -> tuple[str, str, str]:
        """Layer ``layer`` of the torch LSTM ``prefix`` over ``x`` [T, N, I]:
        ``(Y [T, N, H], Y_h [1, N, H], Y_c [1, N, H])``."""
        w_ih, w_hh = weights[f"{prefix}.weight_ih_l{layer}"], weights[f"{prefix}.weight_hh_l{layer}"]
        hidden = w_hh.shape[1]
        tag = f"{prefix.replace('.', '_')}_l{layer}"
        w = self.const(f"{tag}_W", _onnx_gates(w_ih)[None])
        r = self.const(f"{tag}_R", _onnx_gates(w_hh)[None])
        b = self.const(f"{tag}_B", np.concatenate([_onnx_gates(weights[f"{prefix}.bias_ih_l{layer}"]),
                                                   _onnx_gates(weights[f"{prefix}.bias_hh_l{layer}"])])[None])
        inputs = [x, w, r, b, "", *(initial or ())]
        y, y_h, y_c = self.node("LSTM", inputs, 3, hidden_size=hidden)
        return self.one("Squeeze", [y, self.axes(1)]), y_h, y_c

    def frames(self) -> str:
        """T, the features' frame count (a scalar)."""
        return self.one("Gather", [self.one("Shape", [FEATURES]), self.const("one_index", np.asarray(1, np.int64))], axis=0)

    def mask_lengths(self, x: str) -> str:
        """``x`` [T, N, H] with the frames at or past each row's ``feature_lengths`` set to zero."""
        steps = self.one("Range", [self.const("zero", np.asarray(0, np.int64)), self.frames(), self.const("one", np.asarray(1, np.int64))])
        valid = self.one("Less", [self.one("Unsqueeze", [steps, self.axes(1)]), self.one("Unsqueeze", [FEATURE_LENGTHS, self.axes(0)])])
        return self.one("Mul", [x, self.one("Unsqueeze", [self.one("Cast", [valid], to=TensorProto.FLOAT), self.axes(2)])])

    def stack_time(self, x: str, factor: int, width: int) -> str:
        """``x`` [T, N, H] -> [ceil(T / factor), N, factor * H]: consecutive frames side by side,
        an incomplete last group padded with zero frames (the reference's ``StackTime``)."""
        x = self.one("Transpose", [x], perm=[1, 0, 2])
        k = self.const("stack_factor", np.asarray(factor, np.int64))
        short = self.one("Mod", [self.one("Sub", [k, self.one("Mod", [self.frames(), k])]), k])
        pads = self.one("Concat", [self.const("zeros4", np.zeros(4, np.int64)), self.one("Unsqueeze", [short, self.axes(0)]),
                                   self.const("zeros1", np.zeros(1, np.int64))], axis=0)
        shape = self.const("stacked_shape", np.asarray([0, -1, width], np.int64))
        return self.one("Transpose", [self.one("Reshape", [self.one("Pad", [x, pads]), shape])], perm=[1, 0, 2])

    def axes(self, *values: int) -> str:
        return self.const("axes_" + "_".join(str(v) for v in values), np.asarray(values, dtype=np.int64))

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mlpi")
        model.ir_version = IR_VERSION
        model.doc_string = doc
        onnx.checker.check_model(model)
        return model


def build_encoder(weights: Mapping[str, np.ndarray], config: RnntConfig = CONFIG, doc: str = "") -> onnx.ModelProto:
    g = GraphWriter("rnnt_encoder")
    x = g.one("Transpose", [FEATURES], perm=[1, 0, 2])  # [T, N, F]
    for layer in range(config.pre_layers):
        x, _, _ = g.lstm(x, weights, "encoder.pre_rnn.lstm", layer)
    x = g.stack_time(g.mask_lengths(x), config.stack_factor, config.stack_factor * config.encoder_hidden)
    for layer in range(config.post_layers):
        x, _, _ = g.lstm(x, weights, "encoder.post_rnn.lstm", layer)
    g.node("Transpose", [x], [ENCODED], perm=[1, 0, 2])
    return g.model(
        [helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["N", "T", config.features]),
         helper.make_tensor_value_info(FEATURE_LENGTHS, TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info(ENCODED, TensorProto.FLOAT, ["N", "T_stacked", config.encoder_hidden])],
        doc,
    )


def build_prediction(weights: Mapping[str, np.ndarray], config: RnntConfig = CONFIG, doc: str = "") -> onnx.ModelProto:
    g = GraphWriter("rnnt_prediction")
    table = np.concatenate([weights["prediction.embed.weight"], np.zeros((1, config.pred_hidden), np.float32)])
    x = g.one("Transpose", [g.one("Gather", [g.const("embedding", table), SYMBOL], axis=0)], perm=[1, 0, 2])  # [1, N, H]
    h0 = g.one("Transpose", [HIDDEN], perm=[1, 0, 2])  # [L, N, H]
    c0 = g.one("Transpose", [CELL], perm=[1, 0, 2])
    hs, cs = [], []
    for layer in range(config.pred_layers):
        start, end = g.const(f"start{layer}", np.asarray([layer], np.int64)), g.const(f"end{layer}", np.asarray([layer + 1], np.int64))
        initial = (g.one("Slice", [h0, start, end, g.axes(0)]), g.one("Slice", [c0, start, end, g.axes(0)]))
        x, y_h, y_c = g.lstm(x, weights, "prediction.dec_rnn.lstm", layer, initial)
        hs.append(y_h)
        cs.append(y_c)
    g.node("Squeeze", [x, g.axes(0)], [G])
    g.node("Transpose", [g.one("Concat", hs, axis=0)], [HIDDEN_OUT], perm=[1, 0, 2])
    g.node("Transpose", [g.one("Concat", cs, axis=0)], [CELL_OUT], perm=[1, 0, 2])
    state = ["N", config.pred_layers, config.pred_hidden]
    return g.model(
        [helper.make_tensor_value_info(SYMBOL, TensorProto.INT64, ["N", 1]),
         helper.make_tensor_value_info(HIDDEN, TensorProto.FLOAT, state),
         helper.make_tensor_value_info(CELL, TensorProto.FLOAT, state)],
        [helper.make_tensor_value_info(G, TensorProto.FLOAT, ["N", config.pred_hidden]),
         helper.make_tensor_value_info(HIDDEN_OUT, TensorProto.FLOAT, state),
         helper.make_tensor_value_info(CELL_OUT, TensorProto.FLOAT, state)],
        doc,
    )


def build_joint(weights: Mapping[str, np.ndarray], config: RnntConfig = CONFIG, doc: str = "") -> onnx.ModelProto:
    g = GraphWriter("rnnt_joint")
    x = g.one("Concat", [F, G], axis=1)
    x = g.one("Gemm", [x, g.const("joint_w1", weights["joint.net.0.weight"]), g.const("joint_b1", weights["joint.net.0.bias"])], transB=1)
    x = g.one("Relu", [x])
    g.node("Gemm", [x, g.const("joint_w2", weights["joint.net.3.weight"]), g.const("joint_b2", weights["joint.net.3.bias"])],
           [LOGITS], transB=1)
    return g.model(
        [helper.make_tensor_value_info(F, TensorProto.FLOAT, ["N", config.encoder_hidden]),
         helper.make_tensor_value_info(G, TensorProto.FLOAT, ["N", config.pred_hidden])],
        [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["N", config.classes])],
        doc,
    )


def write_graphs(folder: Path, weights: Mapping[str, np.ndarray], doc: str, config: RnntConfig = CONFIG) -> dict[str, Path]:
    """``encoder.onnx``, ``prediction.onnx`` and ``joint.onnx`` in ``folder``, each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    builders = {"encoder": build_encoder, "prediction": build_prediction, "joint": build_joint}
    paths = {}
    for role, build in builders.items():
        path = folder / f"{role}.onnx"
        write_bytes_atomic(path, build(weights, config, doc).SerializeToString())
        paths[role] = path
    return paths


def write_random(folder: Path, seed: int) -> dict[str, Path]:
    """The seeded random-weights graphs (performance only)."""
    doc = f"RNN-T with seeded random weights (seed {seed}, graph v{GRAPH_VERSION}): performance only"
    return write_graphs(folder, random_weights(seed), doc)


def convert_checkpoint(checkpoint: Path, folder: Path, config: RnntConfig = CONFIG) -> dict[str, Path]:
    """The official PyTorch checkpoint's weights as the three graphs (needs torch)."""
    try:
        import torch
    except ImportError:
        from mlpi.core.contract.errors import ModelError

        raise ModelError("converting the official RNN-T checkpoint needs PyTorch, which is not installed",
                         "pip install torch (once: the graphs are cached), or use --weights random") from None
    from mlpi.core.contract.errors import ModelError

    try:
        # weights_only: a checkpoint is a pickle; only tensors and plain containers are accepted.
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reason the file cannot be read is the same error
        raise ModelError(f"cannot read the RNN-T checkpoint {checkpoint}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         "delete it and run `mlpi fetch rnnt` again") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, Mapping):
        raise ModelError(f"{checkpoint} holds no state_dict", "run `mlpi fetch rnnt` again to get the official checkpoint")
    try:
        weights = checkpoint_weights(state, config)
    except ValueError as exc:
        raise ModelError(f"{checkpoint} is not the RNN-T checkpoint: {exc}", "run `mlpi fetch rnnt` again") from None
    return write_graphs(folder, weights, f"RNN-T converted from {checkpoint.name}", config)
