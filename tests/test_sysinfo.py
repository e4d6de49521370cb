"""System description: MLPerf field names, what is detected, and nothing invented."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import onnxruntime
import pytest
from conftest import read_result, run_cli

from mlpi.core.contract.device import Device
from mlpi.core.results.sysinfo import (
    MLPERF_FIELDS,
    parse_cpuinfo,
    parse_meminfo,
    parse_nvidia_smi,
    system_info,
)
from mlpi.testing import tiny_models

TWO_SOCKETS = "\n\n".join(
    f"processor\t: {n}\nmodel name\t: Example CPU 9000\nphysical id\t: {n // 4}\ncore id\t\t: {(n // 2) % 2}\n"
    for n in range(8)
)  # 2 sockets x 2 cores x 2 threads


def fake_smi(folder: Path, body: str) -> Path:
    """An ``nvidia-smi`` stand-in: this machine has no NVIDIA driver, so the real one cannot run here."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {folder / 'args'}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


def test_cpuinfo_counts_sockets_cores_and_threads() -> None:
    cpu = parse_cpuinfo(TWO_SOCKETS)
    assert (cpu.model, cpu.sockets, cpu.cores, cpu.threads) == ("Example CPU 9000", 2, 4, 8)
    arm = parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50\n\nprocessor\t: 1\nBogoMIPS\t: 50\n")
    assert (arm.model, arm.sockets, arm.cores, arm.threads) == (None, None, None, 2)


def test_meminfo_and_nvidia_smi_parsing() -> None:
    assert parse_meminfo("MemFree: 10 kB\nMemTotal:       24684084 kB\n") == 24684084 * 1024
    assert parse_meminfo("nothing here") is None
    gpus = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559 MiB, 535.104.05\nNVIDIA H100 80GB HBM3, 81559 MiB, 535.104.05\n")
    assert [g.to_json() for g in gpus] == [
        {"name": "NVIDIA H100 80GB HBM3", "memory": "81559 MiB", "driver": "535.104.05", "device": "", "backends": []}
    ] * 2


def test_this_machine_is_described_with_mlperf_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    monkeypatch.delenv("MLPI_SYSTEM_NAME", raising=False)
    info = system_info(("onnxruntime", "no-such-distribution"))
    assert list(info)[: len(MLPERF_FIELDS)] == list(MLPERF_FIELDS)
    cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    assert info["host_processor_model_name"] == cpu.model
    assert info["host_processor_vcpu_count"] == os.cpu_count()
    assert info["host_processors_per_node"] == cpu.sockets and info["host_processor_core_count"] == cpu.cores
    assert info["host_memory_bytes"] == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert info["host_memory_capacity"] == f"{info['host_memory_bytes'] / 2**30:.1f} GiB"
    assert info["framework"] == f"onnxruntime {onnxruntime.__version__}"
    assert info["packages"]["no-such-distribution"] is None
    assert "mlcommons-loadgen" in info["other_software_stack"] and "Python" in info["other_software_stack"]
    assert info["hostname"] == socket.gethostname() and info["number_of_nodes"] == 1
    # What cannot be detected is left empty, never guessed.
    for key in ("submitter", "division", "system_name", "cooling", "host_storage_type", "accelerator_model_name",
                "accelerators_per_node", "accelerator_memory_capacity", "host_processor_frequency"):
        assert info[key] == "", key
    assert info["accelerators"] == []


def test_system_name_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPI_SYSTEM_NAME", "lab-box-7")
    assert system_info()["system_name"] == "lab-box-7"


def test_nvidia_gpus_come_from_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = fake_smi(tmp_path / "bin", "printf 'NVIDIA A100-SXM4-40GB, 40960 MiB, 550.54.15\\nNVIDIA A100-SXM4-40GB, 40960 MiB, 550.54.15\\n'")
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    info = system_info()
    assert (folder / "args").read_text().split() == ["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    assert info["accelerators_per_node"] == 2
    assert info["accelerator_model_name"] == "NVIDIA A100-SXM4-40GB"
    assert info["accelerator_memory_capacity"] == "40960 MiB"
    assert info["other_software_stack"].endswith("NVIDIA driver 550.54.15")
    assert len(info["accelerators"]) == 2


class FakeBackend:
    """Plugin-like: what a backend class instance offers sysinfo (name, kinds, probe, describe)."""

    def __init__(self, name: str, devices: dict[str, str], kinds: tuple[str, ...] = ("cpu", "cuda", "npu")) -> None:
        self.name, self.device_kinds, self._devices = name, kinds, devices
        self.probed = False

    def probe(self) -> list[Device]:
        self.probed = True
        return [Device.parse(d) for d in self._devices]

    def describe(self, device: Device) -> str:
        return self._devices.get(str(device), "")


class RaisingBackend(FakeBackend):
    def probe(self) -> list[Device]:
        raise RuntimeError("driver exploded")


class BadDescriptionBackend(FakeBackend):
    def describe(self, device: Device) -> str:
        raise RuntimeError("no name today")


class SlowBackend(FakeBackend):
    released = threading.Event()

    def probe(self) -> list[Device]:
        self.released.wait(30)
        return super().probe()


class SimulatedBackend(FakeBackend):
    simulated = True


def test_accelerators_come_from_the_backends_probes_one_per_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: everything comes from the backends
    npu = FakeBackend("fake-npu", {"cpu": "", "npu:0": "Fake NPU 9000", "npu:1": "Fake NPU 9000"})
    gpu = FakeBackend("fake-gpu", {"cpu": "", "cuda:0": "Example GPU X1, 16.0 GiB"})
    same_gpu = BadDescriptionBackend("other-gpu", {"cuda": ""})  # cuda == cuda:0: the same unit, described by fake-gpu
    cpu_only = FakeBackend("cpu-only", {"cpu": ""}, kinds=("cpu",))
    simulated = SimulatedBackend("sim", {"npu:7": "simulated card"})
    slow = SlowBackend("slow", {"cuda:5": "never seen"})
    started = time.monotonic()
    try:
        info = system_info(backends=[npu, gpu, same_gpu, RaisingBackend("broken", {}), cpu_only, simulated, slow],
                           probe_timeout_s=1.0)
    finally:
        SlowBackend.released.set()
    assert time.monotonic() - started < 10, "a slow probe is waited for probe_timeout_s, not more"
    assert not cpu_only.probed and not simulated.probed, "CPU-only and simulated backends have no accelerators to give"
    assert info["accelerators"] == [
        {"name": "Example GPU X1, 16.0 GiB", "memory": "", "driver": "", "device": "cuda:0", "backends": ["fake-gpu", "other-gpu"]},
        {"name": "Fake NPU 9000", "memory": "", "driver": "", "device": "npu:0", "backends": ["fake-npu"]},
        {"name": "Fake NPU 9000", "memory": "", "driver": "", "device": "npu:1", "backends": ["fake-npu"]},
    ]
    assert info["accelerators_per_node"] == 3
    assert info["accelerator_model_name"] == "Example GPU X1, 16.0 GiB, Fake NPU 9000"
    assert "driver" not in info["other_software_stack"]


def test_nvidia_smi_completes_what_the_backends_do_not_say(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = fake_smi(tmp_path / "bin", "printf 'NVIDIA A100-SXM4-40GB, 40960 MiB, 550.54.15\\nNVIDIA A100-SXM4-40GB, 40960 MiB, 550.54.15\\n'")
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    # CUDA_VISIBLE_DEVICES=1: the backends see one GPU, the machine has two.
    gpu = FakeBackend("fake-gpu", {"cuda:0": "NVIDIA A100-SXM4-40GB, 39.4 GiB"})
    info = system_info(backends=[gpu, FakeBackend("fake-npu", {"npu": ""})])
    assert info["accelerators"] == [
        {"name": "NVIDIA A100-SXM4-40GB", "memory": "40960 MiB", "driver": "550.54.15", "device": "cuda:0", "backends": ["fake-gpu"]},
        {"name": "npu:0", "memory": "", "driver": "", "device": "npu:0", "backends": ["fake-npu"]},  # no description: its name
        {"name": "NVIDIA A100-SXM4-40GB", "memory": "40960 MiB", "driver": "550.54.15", "device": "", "backends": []},
    ]
    assert info["accelerators_per_node"] == 3
    assert info["accelerator_model_name"] == "NVIDIA A100-SXM4-40GB, npu:0"
    assert info["other_software_stack"].endswith("NVIDIA driver 550.54.15")


@pytest.mark.parametrize("body", ["exec sleep 30", "echo 'NVIDIA-SMI has failed' >&2; exit 9", "echo garbage"])
def test_a_broken_or_hanging_nvidia_smi_detects_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> None:
    folder = fake_smi(tmp_path / "bin", body)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    info = system_info(smi_timeout_s=0.5)
    assert info["accelerators"] == [] and info["accelerators_per_node"] == "" and info["accelerator_model_name"] == ""


def test_sysinfo_command(tmp_path: Path) -> None:
    proc = run_cli(["sysinfo", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert set(MLPERF_FIELDS) <= set(info)
    # Every installed backend's runtime is part of the framework field.
    assert f"onnxruntime {onnxruntime.__version__}" in info["framework"]
    table = run_cli(["sysinfo"], cwd=tmp_path, env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "host_processor_model_name" in table.stdout and info["host_processor_model_name"] in table.stdout
    assert "not detected: fill in" in table.stdout


def test_every_run_carries_the_system_description(tmp_path: Path) -> None:
    model = tiny_models.matmul_model(tmp_path / "m.onnx")
    proc = run_cli(["run", "--backend", "onnxruntime", "--model-path", str(model), "--duration", "0.3", "--output", str(tmp_path / "r")],
                   cwd=tmp_path, env={"MLPI_SYSTEM_NAME": "bench-1"})
    assert proc.returncode in (0, 3), proc.stderr
    system = read_result(tmp_path / "r")["system"]
    assert set(MLPERF_FIELDS) <= set(system)
    assert system["system_name"] == "bench-1"
    assert system["framework"] == f"onnxruntime {onnxruntime.__version__}"
    assert system["host_processor_vcpu_count"] == os.cpu_count()


def test_sysinfo_names_openvino_when_it_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
    proc = run_cli(["sysinfo", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    version = info["packages"]["openvino"]
    assert version and f"openvino {version}" in info["framework"]
