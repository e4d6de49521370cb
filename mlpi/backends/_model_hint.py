"""The hint for a runtime's refusal of a model: an operator it lacks, or a broken file.

"check the model with onnx.checker" is the right advice for a file that is not valid ONNX,
and the wrong one for a valid model using an operator one runtime does not implement: the
checker finds nothing, and another backend would run it. :func:`model_hint` tells the two
apart from the runtime's own message (onnxruntime, OpenVINO and TensorRT each name the
operator they lack) and, for an operator name, from ONNX's own list of operators.
"""

from __future__ import annotations

import re

#: Backends a CPU user can try instead, in the order suggested (``mlpi backends`` says
#: which are installed here).
_OTHERS = ("onnxruntime", "openvino", "pytorch")

CHECKER_HINT = "check the model with onnx.checker.check_model, or export it again"

#: (pattern, whether ONNX itself defines the operator whatever its name): the operator
#: is group ``op``, its opset group ``opset`` where the message gives one; a ``types`` group
#: says the runtime lacks it only for the types the model gives it.
_PATTERNS: tuple[tuple[re.Pattern[str], bool], ...] = (
    # onnxruntime: a valid node with no kernel for its types (or on this provider)
    (re.compile(r"Could not find an implementation for (?P<op>[A-Za-z_][\w.]*)\((?P<opset>\d+)\)(?P<types>)"), True),
    # onnxruntime: an operator its ONNX library does not know at the model's opset
    (re.compile(r"No Op registered for (?P<op>[A-Za-z_]\w*) with domain_version of (?P<opset>\d+)"), False),
    # onnxruntime: an operator of a custom domain
    (re.compile(r"(?P<domain>[A-Za-z_][\w.]*):(?P<op>[A-Za-z_]\w*)\(-?\d+\) is not a registered function/op"), False),
    # OpenVINO: "No conversion rule found for operations: Det-17, com.acme.Foo"
    (re.compile(r"No conversion rule found for operations?: (?P<op>[A-Za-z_][\w.]*?)(?:-(?P<opset>\d+))?(?=[,\s]|$)"), False),
    # TensorRT's ONNX parser
    (re.compile(r"No importer registered for op: (?P<op>[A-Za-z_]\w*)"), False),
)


#: OpenVINO: a node its ONNX frontend could not convert, though the file may be valid (an If
#: branch whose ranks it cannot infer: silero-vad's models).
_NOT_CONVERTED = re.compile(r"While validating ONNX node '<Node\((?P<op>[A-Za-z_]\w*)\)")


def model_hint(backend: str, message: str, default: str = CHECKER_HINT) -> str:
    """What to do about ``message``, a runtime's refusal of a model: another backend when it
    names an operator that ONNX defines but ``backend`` lacks; ``default`` otherwise."""
    found = _NOT_CONVERTED.search(message)
    if found is not None:
        others = " or ".join(b for b in _OTHERS if b != backend)
        return (f"{backend} could not convert a {found.group('op')} node of it: run the model with --backend {others}, "
                f"and if they refuse it too, {default}")
    for pattern, valid in _PATTERNS:
        found = pattern.search(message)
        if found is None:
            continue
        op = found.group("op")
        opset = found.groupdict().get("opset")
        domain = found.groupdict().get("domain") or ""
        if "." in op and not domain:  # OpenVINO writes a custom domain's operator as domain.Op
            domain, _, op = op.rpartition(".")
        if domain not in ("", "ai.onnx"):
            return (f"operator {domain}:{op} is a custom operator, which {backend} does not implement: "
                    f"run the model with a backend that has it, or export it with standard ONNX operators")
        if valid or _onnx_defines(op, int(opset) if opset else None):
            others = [b for b in _OTHERS if b != backend]
            types = " for the types this model gives it" if found.groupdict().get("types") is not None else ""
            return (f"operator {op} is not supported by {backend}{types}: run the model with another backend "
                    f"(--backend {' or '.join(others)}; `mlpi backends` lists them), or export it without {op}")
        at = f" at opset {opset}" if opset else ""
        return f"{op} is not an ONNX operator{at}: {default}"
    return default


def _onnx_defines(op: str, opset: int | None) -> bool:
    """Whether ONNX defines operator ``op`` (at ``opset``, where known)."""
    try:
        from onnx import defs
    except ImportError:  # pragma: no cover - the core needs onnx; a backend may run without it
        return False
    try:
        if opset is None:
            return bool(defs.has(op))
        defs.get_schema(op, opset)
        return True
    except Exception:  # noqa: BLE001 - onnx raises SchemaError for an operator it lacks
        return False
