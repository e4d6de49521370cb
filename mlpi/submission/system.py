"""``systems/<system>.json``: what the runs recorded of their machine, plus the user's file.

The fields are those MLCommons' checker requires (``SYSTEM_DESC_REQUIRED_FIELDS`` and
``SYSTEM_DESC_MEANINGFUL_RESPONSE_REQUIRED_FIELDS`` in ``tools/submission/submission_checker/
constants.py``, checked by ``checks/system_check.py``). Values come, last one winning, from:

1. what the runs recorded (``result.json``'s ``system``: :func:`mlpi.core.results.sysinfo.system_info`
   at run time, so the machine that ran, not the one building the tree);
2. the build's own options: ``division``, ``submitter``, ``system_type`` (the category);
3. the user's JSON file (``--system-file``), any field, kept as written.

mlpi never fills in a value it does not know: a field the checker needs filled that is still
empty refuses the build, naming every such field. A field the checker only needs present is
written empty. A user file that contradicts the options (another division) is refused too.

One trap of the checker is taken care of: it counts the number ``0`` as an empty answer, so a
whole-number field given as ``0`` (``accelerators_per_node`` of a machine without any) is
written as the string ``"0"``, which it accepts and its CSV export still reads as a number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import MlpiError, UsageError
from mlpi.core.results.sysinfo import MLPERF_FIELDS

#: Fields the checker needs present (it may accept them empty).
REQUIRED_FIELDS: tuple[str, ...] = (
    "division", "submitter", "status", "system_name", "number_of_nodes", "host_processor_model_name",
    "host_processors_per_node", "host_processor_core_count", "host_memory_capacity", "host_storage_capacity",
    "host_storage_type", "accelerators_per_node", "accelerator_model_name", "accelerator_memory_capacity",
    "framework", "operating_system", "system_type", "other_software_stack", "host_processor_frequency",
    "host_processor_caches", "host_memory_configuration", "host_processor_interconnect", "host_networking",
    "host_networking_topology", "accelerator_frequency", "accelerator_host_interconnect", "accelerator_interconnect",
    "accelerator_interconnect_topology", "accelerator_memory_configuration", "accelerator_on-chip_memories",
    "cooling", "hw_notes", "sw_notes", "host_network_card_count", "system_type_detail",
)
#: Fields the checker needs filled.
FILLED_FIELDS: tuple[str, ...] = (
    "division", "submitter", "system_type", "status", "system_name", "number_of_nodes", "host_processor_model_name",
    "host_processors_per_node", "host_processor_core_count", "host_memory_capacity", "host_memory_configuration",
    "host_storage_capacity", "host_storage_type", "host_networking", "host_network_card_count",
    "host_networking_topology", "accelerators_per_node", "accelerator_model_name", "accelerator_memory_capacity",
    "accelerator_host_interconnect", "accelerator_memory_configuration", "accelerator_interconnect", "cooling",
    "framework", "operating_system", "other_software_stack",
)
#: ``status``: the system's availability.
AVAILABILITIES: tuple[str, ...] = ("available", "preview", "rdi")
#: Fields the checker's summary multiplies: whole numbers.
WHOLE_NUMBER_FIELDS: tuple[str, ...] = ("number_of_nodes", "accelerators_per_node")
#: The build's own options, which a user file may repeat but not contradict.
_FROM_OPTIONS = {"division": "--division", "submitter": "--submitter", "system_type": "--category"}


#: What ``mlpi sysinfo --json`` prints beyond the description's fields (the machine's details,
#: which every run records anyway): a system file made from its output may keep them.
SYSINFO_DETAILS: tuple[str, ...] = ("hostname", "machine", "python", "host_memory_bytes", "accelerators", "packages")


def read_user_file(path: Path | None, what: str = "--system-file", ignored: tuple[str, ...] = ()) -> dict[str, Any]:
    """The user's JSON object (empty without a file), less the ``ignored`` keys; one
    :class:`UsageError` naming the file when it is missing, not JSON, or not an object of
    plain values."""
    if path is None:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist", f"pass {what} with the JSON file you wrote") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}", "check the file's permissions and encoding (UTF-8)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} {path} is not JSON ({exc.msg} at line {exc.lineno})",
                         'write one JSON object of "field": "value" pairs') from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} is not a JSON object", 'write one JSON object of "field": "value" pairs')
    data = {key: value for key, value in data.items() if key not in ignored}
    for key, value in data.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise UsageError(f"{what} {path}: field {key} is {type(value).__name__}, not text or a number",
                             "give each field as text or a number")
    return data


def describe_system(recorded: Mapping[str, Any], user: Mapping[str, Any], *, division: str, submitter: str,
                    category: str, user_file: str = "--system-file") -> tuple[dict[str, Any], list[str]]:
    """The system description, and what keeps it from a submission (an empty required
    field, a value the checker refuses); the build is refused while that list is not empty."""
    description: dict[str, Any] = dict.fromkeys(dict.fromkeys((*MLPERF_FIELDS, *REQUIRED_FIELDS)), "")
    for key in description:
        value = recorded.get(key)
        if value is not None and value != "":
            description[key] = value
    options = {"division": division, "submitter": submitter, "system_type": category}
    description.update(options)
    problems: list[str] = []
    for key, value in user.items():
        if key in options and value not in (None, "") and str(value).strip().lower() != options[key].lower():
            problems.append(f"{user_file} says {key} is {value!r}, but {_FROM_OPTIONS[key]} is {options[key]!r}")
            continue
        if value is not None:
            description[key] = value
    for key in WHOLE_NUMBER_FIELDS:
        value = description.get(key)
        if value == 0 and not isinstance(value, bool):
            description[key] = "0"  # the checker reads the number 0 as an empty answer
        elif value not in ("", None) and not _whole_number(value):
            problems.append(f"{key} is {value!r}, not a whole number (the checker's summary counts with it)")
    status = str(description.get("status") or "").strip().lower()
    if status and status not in AVAILABILITIES:
        problems.append(f"status is {description['status']!r}, not one of {', '.join(AVAILABILITIES)}")
    if str(description.get("is_network", "")).strip().lower() == "true":
        problems.append("is_network is true: mlpi builds closed and open division trees, not network ones")
    empty = [key for key in FILLED_FIELDS if _empty(description.get(key))]
    if empty:
        problems.insert(0, f"the system description leaves {len(empty)} field(s) empty that a submission needs "
                           f"filled: {', '.join(empty)}")
    return description, problems


def system_problem_error(problems: list[str]) -> MlpiError:
    """The one error for a system description that cannot go into a tree."""
    return MlpiError(
        "; ".join(problems),
        "write the missing fields into a JSON file and pass --system-file FILE (a machine without accelerators: "
        '"accelerators_per_node": 0, "accelerator_model_name": "N/A" and the like); \'mlpi sysinfo --json\' shows '
        "what mlpi detected",
    )


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _whole_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and value.strip().isdigit()
