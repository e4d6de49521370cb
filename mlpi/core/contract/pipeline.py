"""Pipelines: where a model's inference step lives, between LoadGen's samples and the sessions.

A pipeline is made once per executor slot and answers ``pipeline(indices)`` with the
samples' responses. The default, :class:`GatherRunPostprocess`, is gather -> one session
run -> postprocess, with the zero-copy paths ResNet50's speed depends on. A model plugin
whose inference is more than one run (a decode loop over several graphs, a sample cut into
windows or rows) gives its own factory in ``ModelSpec.pipeline``; it is handed this slot's
sessions by graph role, the dataset and the batch size, and returns responses of any size
(:class:`~mlpi.core.contract.postprocess.Responses`) for the samples it was given.

A model whose one sample is many batches (3D-UNet's windows) sets ``ModelSpec.pieces``: its
pipeline then gets no sessions of its own but :class:`Pieces`, which runs the batches it hands
over on every device unit and slot of the run (the core's workers, see
:mod:`mlpi.core.engine.pieces`), so one sample is spread over all of them. A model whose
sample is a group of rows (DLRM's users) sets ``ModelSpec.grouped_samples`` instead: the
core's batches then count rows (:mod:`mlpi.core.engine.rows`), and its pipeline runs each
batch's rows on its slot's sessions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mlpi.core.contract.backend import Session, TensorSpec
from mlpi.core.contract.dataset import Dataset
from mlpi.core.contract.errors import RunFailed
from mlpi.core.contract.postprocess import Postprocessor, Responses

#: The graph role of a model that has one graph.
MAIN_GRAPH = "model"


class Pipeline(ABC):
    """Samples in, responses out, for one slot (never called from two threads at once)."""

    @property
    @abstractmethod
    def sample_nbytes(self) -> int | None:
        """Bytes of every response when all are the same size, else ``None``."""

    @abstractmethod
    def __call__(self, indices: Sequence[int]) -> np.ndarray | Responses:
        """Responses of the loaded samples ``indices``: an array with one row per sample
        (``sample_nbytes`` each), or :class:`Responses`. Valid until the next call."""


@dataclass(frozen=True)
class PipelineContext:
    """What a pipeline factory is given for one slot.

    - ``sessions``: this slot's session per graph role (``"model"`` for a one-graph model).
    - ``dataset``: the loaded samples; ``dataset.gather``/``dataset.sample`` build feeds.
    - ``batch_size``: the most samples one call will be given.
    - ``outputs``: the main graph's outputs as observed on one sample (dynamic dims resolved
      where the graph's outputs are batch-first).
    - ``postprocess``: the model's postprocessor for these outputs (``None`` if it has none).
    - ``pieces``: for a model that sets ``ModelSpec.pieces``, where its batches run (its
      ``sessions`` are then empty); ``None`` otherwise.
    - ``main_role``: the graph the dataset feeds (the first the model declares).
    - ``unit``: the device unit this slot runs on; ``placed``: every unit's sessions, as
      ``(unit, {role: session})``, for a model whose graphs are placed on some units only
      (``ModelSpec.placement``): a graph not in ``sessions`` is reached there.
    """

    sessions: Mapping[str, Session]
    dataset: Dataset
    batch_size: int
    outputs: Sequence[TensorSpec]
    postprocess: Postprocessor | None
    pieces: Pieces | None = None
    main_role: str = MAIN_GRAPH
    unit: str = ""
    placed: Sequence[tuple[str, Mapping[str, Session]]] = ()

    def session_for(self, role: str) -> Session:
        """This slot's session of ``role``, else the first unit's that has it."""
        if role in self.sessions:
            return self.sessions[role]
        for _, sessions in self.placed:
            if role in sessions:
                return sessions[role]
        raise KeyError(f"no unit of this run holds graph '{role}'")


PipelineFactory = Callable[[PipelineContext], Pipeline]
#: ``consume(piece_number, outputs)``: called in the worker that ran the piece.
PieceConsumer = Callable[[int, Mapping[str, np.ndarray]], None]


class Pieces(ABC):
    """Batches of one or more samples' work, run anywhere the run has a slot.

    - ``batch_size``: the most rows one piece should have (``--batch-size``, else what
      the sessions prefer).
    - ``workers``: how many pieces can run at once (slots over every unit): a sample cut
      into at least this many pieces keeps every unit busy.
    - ``roles``: the graphs a piece may run.
    """

    batch_size: int
    workers: int
    roles: tuple[str, ...]

    @abstractmethod
    def run(
        self, feeds: Sequence[Mapping[str, np.ndarray]], role: str = MAIN_GRAPH, consume: PieceConsumer | None = None
    ) -> list[Mapping[str, np.ndarray]] | None:
        """Run every piece (one feed dict each, batch-first, for graph ``role``); wait for all.

        ``feeds[k]`` is read in the worker that runs piece ``k``: a lazy sequence may build
        each piece there (3D-UNet copies its windows out of the volume so), which spreads
        the copying over the workers and holds only the pieces in flight in memory.

        Without ``consume`` the outputs come back in order, copied (a session may reuse its
        output buffers). With it, ``consume(k, outputs)`` is called in the worker that ran
        piece ``k`` while the outputs are valid: no copy, but calls may come from several
        threads at once. The first piece that fails raises here; the pieces not yet started
        are not run.
        """


class GatherRunPostprocess(Pipeline):
    """The default: gather the batch's feeds, run the main graph once, postprocess.

    Feed buffers are preallocated; a batch of one runs straight from the dataset's memory
    unless a fixed-batch session needs padding rows.
    """

    def __init__(self, session: Session, dataset: Dataset, postprocess: Postprocessor, batch_size: int,
                 check_rows: bool = True) -> None:
        caps = session.capabilities
        self.session = session
        self.dataset = dataset
        self.postprocess = postprocess
        self.fixed = caps.fixed_batch
        #: Every output must have as many rows as the batch sent (a backend that answers fewer
        #: would otherwise pass as VALID); off for a model whose outputs are not batch-first.
        self.check_rows = check_rows
        rows = caps.max_batch_size if caps.fixed_batch and caps.max_batch_size else batch_size
        self._zero_copy_single = rows == 1 or not self.fixed
        self._feeds = {
            spec.name: np.zeros((rows, *spec.sample_shape), dtype=spec.dtype) for spec in dataset.inputs
        }
        self._views: dict[int, Mapping[str, np.ndarray]] = {}

    @classmethod
    def from_context(cls, context: PipelineContext) -> GatherRunPostprocess:
        if context.postprocess is None:
            raise ValueError("the default pipeline needs a postprocessor")
        return cls(context.sessions[context.main_role], context.dataset, context.postprocess, context.batch_size)

    @property
    def sample_nbytes(self) -> int | None:
        return self.postprocess.sample_nbytes

    def feeds_for(self, n: int) -> Mapping[str, np.ndarray]:
        """The feed views for a batch of ``n``: all rows for a fixed-batch session."""
        if self.fixed:
            return self._feeds
        views = self._views.get(n)
        if views is None:
            views = self._views[n] = {name: buf[:n] for name, buf in self._feeds.items()}
        return views

    def __call__(self, indices: Sequence[int]) -> np.ndarray | Responses:
        n = len(indices)
        if n == 1 and self._zero_copy_single:
            feeds = self.dataset.sample(indices[0])
        else:
            self.dataset.gather(indices, self._feeds)
            feeds = self.feeds_for(n)
        outputs = self.session.run(feeds)
        if self.check_rows:
            sent = len(next(iter(feeds.values())))
            for name, value in outputs.items():
                if len(value) != sent:
                    raise RunFailed(
                        f"the backend answered {len(value)} rows of output '{name}' for a batch of {sent}",
                        "the backend is broken: report it to its authors (mlpi checks every batch's outputs)",
                    )
        return self.postprocess(outputs, indices)
