"""RNN-T: features, graphs and the greedy decode against MLCommons' own code, the checkpoint
conversion, and whole runs whose transcripts are known by construction.

MLCommons' reference (``retired_benchmarks/speech_recognition/rnnt/pytorch`` in the shared
``mlcommons-inference`` folder) is imported as it is: its ``FilterbankFeatures``, its
``RNNT`` model loaded with the same weights as our graphs, and its ``ScriptGreedyDecoder``.
Those tests need torch and librosa and skip with the reason when either is missing.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlpi.core.contract.backend import Capabilities
from mlpi.core.contract.errors import ModelError
from mlpi.core.contract.pipeline import PipelineContext
from mlpi.models.rnnt import LABELS, GreedyDecode
from mlpi.models.rnnt_graph import (
    BLANK,
    RnntConfig,
    convert_checkpoint,
    random_weights,
    write_graphs,
)

ort = pytest.importorskip("onnxruntime")

RNNT_DIR = Path(__file__).resolve().parents[2] / "shared" / "mlcommons-inference" / "retired_benchmarks" / "speech_recognition" / "rnnt"
REFERENCE = RNNT_DIR / "pytorch"
#: A small configuration: the reference's structure (layers, stacking, vocabulary), narrow.
SMALL = RnntConfig(features=24, encoder_hidden=32, pred_hidden=16, joint_hidden=20)


def _needs_reference() -> None:
    if not REFERENCE.is_dir():
        pytest.skip(f"MLCommons' RNN-T reference is not at {REFERENCE} (the shared mlcommons-inference folder is absent)")
    for module in ("torch", "librosa"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"MLCommons' RNN-T reference imports {module} (pip install {module})")


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    """The reference's modules, imported from its folder (``sys.path`` restored after)."""
    _needs_reference()
    saved = list(sys.path)
    sys.path.insert(0, str(REFERENCE))
    try:
        import decoders
        import model_separable_rnnt
        from parts import features

        yield type("Reference", (), {"RNNT": model_separable_rnnt.RNNT, "Decoder": decoders.ScriptGreedyDecoder,
                                     "Filterbank": features.FilterbankFeatures})
    finally:
        sys.path[:] = saved


class _Session:
    """onnxruntime behind the ``Session.run`` interface the pipeline uses; ``fixed`` makes
    it a program compiled for exactly that many rows."""

    def __init__(self, path: Path, fixed: int | None = None) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.calls = 0
        self.capabilities = Capabilities(max_batch_size=fixed, fixed_batch=fixed is not None)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.capabilities.fixed_batch:
            assert {len(v) for v in feeds.values()} == {self.capabilities.max_batch_size}, "a fixed-batch program"
        return dict(zip(self.names, self.session.run(None, dict(feeds))))


def _pipeline(paths: Mapping[str, Path], config: RnntConfig = SMALL, batch: int = 4, fixed: int | None = None) -> GreedyDecode:
    sessions = {role: _Session(path, fixed) for role, path in paths.items()}
    context = PipelineContext(sessions=sessions, dataset=None, batch_size=batch, outputs=(), postprocess=None)  # type: ignore[arg-type]
    return GreedyDecode(context, config)


def _reference_model(reference: Any, weights: Mapping[str, np.ndarray], config: RnntConfig = SMALL) -> Any:
    import torch

    settings = {"rnn_type": "lstm", "encoder_n_hidden": config.encoder_hidden, "encoder_pre_rnn_layers": config.pre_layers,
                "encoder_stack_time_factor": config.stack_factor, "encoder_post_rnn_layers": config.post_layers,
                "pred_n_hidden": config.pred_hidden, "pred_rnn_layers": config.pred_layers, "forget_gate_bias": 1.0,
                "joint_n_hidden": config.joint_hidden, "dropout": 0.32}
    model = reference.RNNT(settings, num_classes=config.classes, no_featurizer=True, in_features=config.features).eval()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()}, strict=True)
    return model


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("samples", [4567, 16000, 16001, 100_003])
def test_features_are_the_references(reference: Any, samples: int) -> None:
    import torch

    from mlpi.models.rnnt_features import Featurizer

    filterbank = reference.Filterbank(sample_rate=16000, window_size=0.02, window_stride=0.01, n_fft=512, nfilt=80,
                                      window="hann", normalize="per_feature", dither=0.00001, pad_to=0,
                                      frame_splicing=3, log=True)
    rng = np.random.default_rng(samples)
    t = np.arange(samples) / 16000
    wave = (0.2 * np.sin(2 * np.pi * 310 * t) * np.sin(2 * np.pi * 1.3 * t) + 0.01 * rng.standard_normal(samples))
    wave = wave.astype(np.float32)
    theirs = filterbank((torch.from_numpy(wave)[None], torch.tensor([samples])))[0].numpy().T
    ours = Featurizer()(wave)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    # float32 rounding, amplified by the per-feature division: values reach ~15
    np.testing.assert_allclose(ours, theirs, atol=3e-4, rtol=0)


def test_an_utterance_too_short_for_the_stft_is_refused() -> None:
    from mlpi.core.contract.errors import DatasetError
    from mlpi.models.rnnt_features import Featurizer

    pytest.importorskip("librosa", reason="the featurizer's mel filters are librosa's (pip install 'mlpi[rnnt]')")
    with pytest.raises(DatasetError, match="too short"):
        Featurizer()(np.zeros(200, np.float32))


# --------------------------------------------------------------------------- graphs and decode


@pytest.fixture(scope="module")
def small_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[float, tuple[dict[str, np.ndarray], dict[str, Path]]]:
    """Small graphs at several blank biases: always blank, always a symbol (30 a frame), and
    two in between (random logits barely vary: the decode flips from one extreme to the
    other between 0.20 and 0.24)."""
    made = {}
    for bias in (1.0, -1.0, 0.21, 0.22):
        weights = random_weights(7, SMALL)
        weights["joint.net.3.bias"][BLANK] += bias - 1.0  # random_weights adds +1 to blank
        made[bias] = (weights, write_graphs(tmp_path_factory.mktemp(f"small{bias}"), weights, "test", SMALL))
    return made


def test_graphs_compute_the_reference_modules(reference: Any, small_graphs: Any) -> None:
    import torch

    weights, paths = small_graphs[0.21]
    model = _reference_model(reference, weights)
    encoder, prediction, joint = (_Session(paths[r]) for r in ("encoder", "prediction", "joint"))
    rng = np.random.default_rng(0)
    utterances = [rng.standard_normal((n, SMALL.features)).astype(np.float32) for n in (23, 16, 7)]
    batch = np.zeros((3, 23, SMALL.features), np.float32)
    for row, u in enumerate(utterances):
        batch[row, : len(u)] = u
    ours = encoder.run({"features": batch, "feature_lengths": np.array([23, 16, 7])})["encoded"]
    with torch.no_grad():
        for row, u in enumerate(utterances):
            theirs, length = model.encoder(torch.from_numpy(u)[:, None], torch.tensor([len(u)]))
            assert int(length[0]) == (len(u) + 1) // 2
            np.testing.assert_allclose(ours[row, : int(length[0])], theirs[0].numpy(), atol=1e-5)
        # prediction: "no symbol yet" from no state, then a symbol from a state
        g0, (h0, c0) = model.prediction(None, None)
        out = prediction.run({"symbol": np.array([[BLANK]]), "hidden": np.zeros((1, 2, SMALL.pred_hidden), np.float32),
                              "cell": np.zeros((1, 2, SMALL.pred_hidden), np.float32)})
        np.testing.assert_allclose(out["g"], g0[:, 0].numpy(), atol=1e-6)
        np.testing.assert_allclose(out["hidden_out"], h0.transpose(0, 1).numpy(), atol=1e-6)
        g1, (_, c1) = model.prediction(torch.tensor([[5]]), (h0, c0))
        out = prediction.run({"symbol": np.array([[5]]), "hidden": out["hidden_out"], "cell": out["cell_out"]})
        np.testing.assert_allclose(out["g"], g1[:, 0].numpy(), atol=1e-6)
        np.testing.assert_allclose(out["cell_out"], c1.transpose(0, 1).numpy(), atol=1e-6)
        logits = model.joint(torch.from_numpy(ours[:1, :1]), g1)[:, 0, 0]
        mine = joint.run({"f": ours[0, :1], "g": out["g"]})["logits"]
        np.testing.assert_allclose(mine, logits.numpy(), atol=1e-5)


def _reference_steps(model: Any, features: np.ndarray) -> tuple[list[int], list[tuple[int, float]]]:
    """decoders.py's ``_greedy_decode`` with the reference's torch modules: the labels, and
    every step's arg-max with the margin between its two best logits (where float rounding
    could flip it)."""
    import torch

    with torch.no_grad():
        encoded, lengths = model.encoder(torch.from_numpy(features)[:, None], torch.tensor([len(features)]))
        hidden, labels, steps = None, [], []
        for t in range(int(lengths[0])):
            for _ in range(30):
                if labels:
                    g, hidden_prime = model.prediction(torch.tensor([[labels[-1]]]), hidden)
                else:
                    g, hidden_prime = model.prediction(None, hidden)
                logits = model.joint(encoded[:, t : t + 1], g)[0, 0, 0]
                top = torch.topk(logits, 2).values
                k = int(torch.argmax(logits))
                steps.append((k, float(top[0] - top[1])))
                if k == BLANK:
                    break
                labels.append(k)
                hidden = hidden_prime
    return labels, steps


def _sure_prefix(steps: list[tuple[int, float]], tie: float = 1e-4) -> int:
    """How many labels are emitted before the first step whose two best logits are within
    ``tie`` of each other (after it, a rounding difference may rightly change the path)."""
    emitted = 0
    for k, margin in steps:
        if margin < tie:
            break
        emitted += k != BLANK
    return emitted


@pytest.mark.parametrize("bias", [1.0, -1.0, 0.21, 0.22])
def test_greedy_decode_is_the_references(reference: Any, small_graphs: Any, bias: float) -> None:
    """Our decode (prediction once per symbol, lock-step batches) against the reference's:
    ScriptGreedyDecoder itself, and its loop step by step with the margins of every arg-max.
    Ours must agree up to the first near-tie (random weights make some: two logits equal to
    1e-5), and exactly with the reference loop run on our own graphs."""
    import torch

    weights, paths = small_graphs[bias]
    model = _reference_model(reference, weights)
    decoder = reference.Decoder(BLANK, torch.jit.script(model))
    rng = np.random.default_rng(3)
    utterances = [rng.standard_normal((n, SMALL.features)).astype(np.float32) for n in (31, 12, 1, 26)]
    pipeline = _pipeline(paths)
    ours_single = [pipeline.transcribe([u])[0] for u in utterances]
    assert pipeline.transcribe(utterances) == ours_single, "a batch decodes as its utterances one by one"
    compared = 0
    for u, ours in zip(utterances, ours_single):
        _, _, sentences = decoder.forward(torch.from_numpy(u)[:, None], torch.tensor([len(u)]))
        labels, steps = _reference_steps(model, u)
        assert list(sentences[0]) == labels, "the step-by-step loop is ScriptGreedyDecoder's"
        sure = _sure_prefix(steps)
        assert ours[:sure] == labels[:sure]
        compared += sure
        if sure == len(labels):
            assert ours == labels
    assert compared > 0 or bias == 1.0
    lengths = [len(h) for h in ours_single]
    if bias == -1.0:
        assert lengths == [30 * ((len(u) + 1) // 2) for u in utterances], "30 symbols a frame, the cap"
    if bias == 1.0:
        assert lengths == [0, 0, 0, 0]
    if bias == 0.21:
        assert any(0 < n < 30 * ((len(u) + 1) // 2) for n, u in zip(lengths, utterances)), "a mix of blank and symbols"


def _loop_on(paths: Mapping[str, Path], features: np.ndarray) -> list[int]:
    """The reference's loop (prediction at every step, one utterance) on our graphs."""
    encoder, prediction, joint = (_Session(paths[r]) for r in ("encoder", "prediction", "joint"))
    encoded = encoder.run({"features": features[None], "feature_lengths": np.array([len(features)])})["encoded"][0]
    state = np.zeros((1, SMALL.pred_layers, SMALL.pred_hidden), np.float32)
    hidden, cell, labels = state, state, []
    for t in range((len(features) + 1) // 2):
        for _ in range(30):
            out = prediction.run({"symbol": np.array([[labels[-1] if labels else BLANK]]), "hidden": hidden, "cell": cell})
            k = int(np.argmax(joint.run({"f": encoded[t : t + 1], "g": out["g"]})["logits"][0]))
            if k == BLANK:
                break
            labels.append(k)
            hidden, cell = out["hidden_out"], out["cell_out"]
    return labels


@pytest.mark.parametrize("bias", [-1.0, 0.21, 0.22])
def test_greedy_decode_is_the_reference_loop_on_the_same_graphs(small_graphs: Any, bias: float) -> None:
    _, paths = small_graphs[bias]
    rng = np.random.default_rng(4)
    utterances = [rng.standard_normal((n, SMALL.features)).astype(np.float32) for n in (17, 9, 2)]
    expected = [_loop_on(paths, u) for u in utterances]
    pipeline = _pipeline(paths)
    assert [pipeline.transcribe([u])[0] for u in utterances] == expected
    assert pipeline.transcribe(utterances) == expected
    padded = _pipeline(paths, fixed=4)  # programs compiled for 4 rows: fewer are padded, the answers the same
    assert [padded.transcribe([u])[0] for u in utterances] == expected
    assert padded.transcribe(utterances) == expected


def test_prediction_runs_once_per_emitted_symbol(small_graphs: Any) -> None:
    _, paths = small_graphs[-1.0]
    pipeline = _pipeline(paths, batch=1)
    (hypothesis,) = pipeline.transcribe([np.ones((9, SMALL.features), np.float32)])
    assert len(hypothesis) == 5 * 30
    assert pipeline.prediction.calls == 1 + len(hypothesis)  # type: ignore[attr-defined]
    assert pipeline.joint.calls == len(hypothesis)  # type: ignore[attr-defined]  # never blank: one joint run a symbol


# --------------------------------------------------------------------------- the checkpoint


def _checkpoint(path: Path, weights: Mapping[str, np.ndarray], **extra: Any) -> Path:
    import torch

    state: dict[str, Any] = {k.replace("joint.net", "joint_net"): torch.from_numpy(v.copy()) for k, v in weights.items()}
    state["audio_preprocessor.featurizer.fb"] = torch.zeros(1, 80, 257)
    state["audio_preprocessor.featurizer.window"] = torch.zeros(320)
    torch.save({"state_dict": state, "epoch": 100, **extra}, path)
    return path


def test_the_checkpoint_converts_to_the_reference_model(reference: Any, tmp_path: Path) -> None:
    import torch

    weights = random_weights(11, SMALL)
    paths = convert_checkpoint(_checkpoint(tmp_path / "rnnt.pt", weights), tmp_path / "graphs", SMALL)
    assert sorted(paths) == ["encoder", "joint", "prediction"]
    model = _reference_model(reference, weights)
    features = np.random.default_rng(1).standard_normal((14, SMALL.features)).astype(np.float32)
    ours = _Session(paths["encoder"]).run({"features": features[None], "feature_lengths": np.array([14])})["encoded"]
    with torch.no_grad():
        theirs, _ = model.encoder(torch.from_numpy(features)[:, None], torch.tensor([14]))
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)


def test_a_checkpoint_that_is_not_rnnts_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="reading the checkpoint needs torch")

    weights = random_weights(11, SMALL)
    missing = {k: v for k, v in weights.items() if not k.startswith("joint")}
    with pytest.raises(ModelError, match="is not the RNN-T checkpoint: the checkpoint has no joint.net.0.weight"):
        convert_checkpoint(_checkpoint(tmp_path / "a.pt", missing), tmp_path / "a", SMALL)
    wrong = dict(weights, **{"prediction.embed.weight": np.zeros((5, 5), np.float32)})
    with pytest.raises(ModelError, match=r"wrong shape: prediction.embed.weight \(5, 5\)"):
        convert_checkpoint(_checkpoint(tmp_path / "b.pt", wrong), tmp_path / "b", SMALL)
    (tmp_path / "c.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read the RNN-T checkpoint"):
        convert_checkpoint(tmp_path / "c.pt", tmp_path / "c", SMALL)
    torch.save([1, 2, 3], tmp_path / "d.pt")
    with pytest.raises(ModelError, match="holds no state_dict"):
        convert_checkpoint(tmp_path / "d.pt", tmp_path / "d", SMALL)


class _Hostile:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("ran code from a checkpoint",))


def test_a_checkpoint_that_runs_code_is_not_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch", reason="reading the checkpoint needs torch")

    torch.save({"state_dict": {}, "payload": _Hostile()}, tmp_path / "evil.pt")
    capsys.readouterr()
    with pytest.raises(ModelError, match="cannot read the RNN-T checkpoint"):
        convert_checkpoint(tmp_path / "evil.pt", tmp_path / "evil", SMALL)
    assert "ran code" not in capsys.readouterr().out


# --------------------------------------------------------------------------- whole runs, known answers

TEXTS = ("bad ace", "aced cab", "be a cad", "dab ace", "a bed cab")


@pytest.fixture(scope="module")
def tone_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A LibriSpeech folder of tone-alphabet utterances (transcripts = their texts) and the
    known graphs that transcribe them."""
    pytest.importorskip("soundfile")
    pytest.importorskip("librosa")
    from mlpi.testing.librispeech_fixture import FixtureUtterance, write_librispeech
    from mlpi.testing.rnnt_known import tone_audio, write_known_graphs

    root = tmp_path_factory.mktemp("tones")
    audio = {f"1-2-{k:04d}": tone_audio(text, seed=k) for k, text in enumerate(TEXTS)}
    utterances = [FixtureUtterance(f"1-2-{k:04d}", text, len(audio[f"1-2-{k:04d}"]) / 16000) for k, text in enumerate(TEXTS)]
    write_librispeech(root / "data", utterances, audio=lambda u: audio[u.id], flac=["1-2-0003"])
    write_known_graphs(root / "known")
    return root / "data", root / "known"


def test_known_transcripts_and_the_tone_alphabet(tone_data: tuple[Path, Path]) -> None:
    from mlpi.datasets.librispeech import locate_audio, read_waveform
    from mlpi.models.rnnt_features import Featurizer
    from mlpi.testing.rnnt_known import expected_transcript, tone_audio

    data, known = tone_data
    pipeline = _pipeline({r: known / f"{r}.onnx" for r in ("encoder", "prediction", "joint")}, RnntConfig(), batch=5)
    manifest = json.loads((data / "dev-clean-wav.json").read_text())
    waves = [read_waveform(locate_audio(data, entry["files"][0]["fname"]), 16000) for entry in manifest]
    assert pipeline.transcribe([Featurizer()(w) for w in waves]) == [expected_transcript(t) for t in TEXTS]
    assert "".join(LABELS[k] for k in expected_transcript("aa bb")) == "a b"
    with pytest.raises(ValueError, match="every character"):
        tone_audio("bad")


def _mlpi(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlpi", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "pytorch", "qaic"])
def test_an_accuracy_run_transcribes_the_tones(tone_data: tuple[Path, Path], tmp_path: Path, backend: str) -> None:
    """Every backend: WER 0 on the tone utterances, in MLCommons' words."""
    needs = {"openvino": "openvino", "pytorch": "torch"}.get(backend)
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{backend} is not installed")
    data, known = tone_data
    extra = ["--device", "qaic:0-1"] if backend == "qaic" else []
    done = _mlpi("run", "--model", "rnnt", "--model-path", str(known), "--backend", backend, *extra,
                 "--dataset", "librispeech", "--dataset-path", str(data), "--mode", "accuracy", "-s", "Offline",
                 "--batch-size", "2", "--output", str(tmp_path / "results"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    from conftest import only_run_dir

    run = only_run_dir(tmp_path / "results")
    accuracy = (run / "Offline" / "accuracy" / "accuracy.txt").read_text()
    assert accuracy.strip() == "Word Error Rate: 0.0%, accuracy=100.0%"
    result = json.loads((run / "result.json").read_text())
    (test,) = result["tests"]
    assert test["accuracy"]["metric"] == "WER" and test["accuracy"]["higher_is_better"] is False
    assert test["accuracy"]["passed"] is True


@pytest.mark.slow
def test_score_and_mlcommons_agree_on_a_run_with_errors(tone_data: tuple[Path, Path], tmp_path: Path) -> None:
    """A manifest whose transcripts differ from what the tones say: the run's WER, `mlpi
    score` and accuracy_eval.py print the same line."""
    if importlib.util.find_spec("inflect") is None or importlib.util.find_spec("unidecode") is None:
        pytest.skip("accuracy_eval.py needs inflect and unidecode")
    data, known = tone_data
    manifest = json.loads((data / "dev-clean-wav.json").read_text())
    manifest[0]["transcript"] = "bad ice"
    manifest[2]["transcript"] = "be a cad extra words"
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for item in data.iterdir():
        if item.name != "dev-clean-wav.json":
            (wrong / item.name).symlink_to(item)
    (wrong / "dev-clean-wav.json").write_text(json.dumps(manifest))
    done = _mlpi("run", "--model", "rnnt", "--model-path", str(known), "--dataset", "librispeech", "--dataset-path",
                 str(wrong), "--mode", "accuracy", "-s", "SingleStream", "--output", str(tmp_path / "results"), cwd=tmp_path)
    assert done.returncode == 3 and "WER 21.429% is above the target 8.377%" in done.stdout + done.stderr, done.stderr[-3000:]
    from conftest import only_run_dir

    run = only_run_dir(tmp_path / "results")
    line = (run / "SingleStream" / "accuracy" / "accuracy.txt").read_text().strip()
    # 3 errors (ice for ace; extra and words missing) over 2 + 2 + 5 + 2 + 3 reference words
    assert line == "Word Error Rate: 21.428571428571427%, accuracy=78.57142857142857%"
    scored = _mlpi("score", str(run), "--dataset-path", str(wrong), cwd=tmp_path)
    assert scored.returncode == 3, scored.stderr[-2000:]  # below the target
    assert line in scored.stdout.splitlines() and "WER 21.429% (target <= 8.377%) FAIL" in scored.stdout
    if not RNNT_DIR.is_dir():
        pytest.skip(f"MLCommons' accuracy_eval.py is not at {RNNT_DIR}")
    official = subprocess.run(
        [sys.executable, "accuracy_eval.py", "--log_dir", str(run / "SingleStream" / "accuracy"), "--dataset_dir",
         str(wrong), "--manifest", str(wrong / "dev-clean-wav.json"), "--output_dtype", "int64"],
        cwd=RNNT_DIR, capture_output=True, text=True, timeout=300, check=False)
    assert official.returncode == 0, official.stderr[-2000:]
    assert official.stdout.strip().splitlines()[-1] == line


# --------------------------------------------------------------------------- every backend, the random graphs


@pytest.mark.slow
def test_the_random_graphs_agree_across_cpu_backends(tmp_path: Path) -> None:
    """The `--weights random` graphs (full size) on every installed CPU backend: the same
    encoder frames to float32 rounding, the same transcripts from the same audio."""
    from test_agreement import installed_backends

    from mlpi.core.contract.device import Device
    from mlpi.core.engine.onnx_file import inspect_onnx
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.options import build_options
    from mlpi.core.plugins.registry import Registry
    from mlpi.models.rnnt_features import Featurizer
    from mlpi.models.rnnt_graph import write_random

    names = installed_backends()
    if len(names) < 2:
        pytest.skip(f"needs two real CPU backends, found {names}")
    pytest.importorskip("librosa", reason="the featurizer's mel filters are librosa's (pip install 'mlpi[rnnt]')")
    paths = write_random(tmp_path / "random", 0)
    rng = np.random.default_rng(2)
    features = [Featurizer()(rng.standard_normal(n).astype(np.float32)) for n in (16_000, 27_000)]
    registry = Registry(PluginsConfig.load())
    encoded, transcripts = {}, {}
    for name in names:
        backend = registry.backend(name)
        options = build_options(backend.Options, [], name)
        sessions = {role: backend.load(inspect_onnx(path), Device("cpu"), options, "fp32") for role, path in paths.items()}
        context = PipelineContext(sessions=sessions, dataset=None, batch_size=2, outputs=(), postprocess=None)  # type: ignore[arg-type]
        batch = np.zeros((2, len(features[1]), 240), np.float32)
        batch[0, : len(features[0])], batch[1] = features
        encoded[name] = np.asarray(sessions["encoder"].run({"features": batch, "feature_lengths": np.array([len(f) for f in features])})["encoded"])
        transcripts[name] = GreedyDecode(context).transcribe(features)
        for session in sessions.values():
            session.close()
    first = names[0]
    for name in names[1:]:
        np.testing.assert_allclose(encoded[name], encoded[first], atol=1e-4, err_msg=name)
        assert transcripts[name] == transcripts[first], name
