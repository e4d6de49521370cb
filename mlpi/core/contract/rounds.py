"""What each MLPerf Inference round fixes for every benchmark alike: LoadGen's random seeds.

Each round's ``mlperf.conf`` sets ``qsl_rng_seed``, ``sample_index_rng_seed`` and
``schedule_rng_seed`` (``*.*.<seed> = ...``), and the submission checker of that round
(``tools/submission/submission_checker/constants.py``, ``MODEL_CONFIG[round]["seeds"]``)
refuses a performance run made with any others. LoadGen reads them only from the mlperf.conf
built into it, so a benchmark that keeps the rules of an earlier round (a retired one) gets
its round's seeds set on the test settings by mlpi (:mod:`mlpi.core.engine.child`).

The values are those of MLCommons' ``mlperf.conf`` at the round's tag (v2.0: ``mlperf.conf``
at tag v2.0; v4.0: tag v4.0; v5.0 and v5.1: ``loadgen/mlperf.conf`` at those tags; v6.0: the
commit "Update seeds for inference v6.0"; v6.1: "Add random seeds for v6.1"), equal to the
checker's ``seeds`` where its constants hold the round.
"""

from __future__ import annotations

#: The names of the seeds, as LoadGen's settings and its detail log (``effective_<name>``) give them.
SEED_NAMES: tuple[str, str, str] = ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed")

#: Round -> (qsl_rng_seed, sample_index_rng_seed, schedule_rng_seed).
ROUND_SEEDS: dict[str, tuple[int, int, int]] = {
    "v2.0": (6655344265603136530, 15863379492028895792, 12662793979680847247),
    "v4.0": (13281865557512327830, 198141574272810017, 7575108116881280410),
    "v5.0": (6023615788873153749, 15036839855038426416, 9933818062894767841),
    "v5.1": (1780908523862526354, 14771362308971278857, 18209322760996052031),
    "v6.0": (2465351861681999779, 14276810075590677512, 3936089224930324775),
    "v6.1": (2085463073848966840, 2747215439041700203, 16159082839903944936),
}


def round_seeds(round_name: str) -> dict[str, int]:
    """The round's seeds by name; empty for a round mlpi does not know (LoadGen's own apply)."""
    values = ROUND_SEEDS.get(round_name)
    return dict(zip(SEED_NAMES, values, strict=True)) if values else {}


__all__ = ["ROUND_SEEDS", "SEED_NAMES", "round_seeds"]
