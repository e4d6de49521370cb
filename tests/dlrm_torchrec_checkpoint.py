"""Write a DLRM-v2 torchrec checkpoint as MLCommons' reference makes and reads it, and what
torchrec's own model predicts from it: the known answer for mlpi's checkpoint converter.

Run with a Python that has torch, torchrec (with fbgemm-gpu's CPU build) and torchsnapshot::

    python tests/dlrm_torchrec_checkpoint.py OUT_FOLDER ROWS_PER_TABLE

It builds the model as ``recommendation/dlrm_v2/pytorch/python/backend_pytorch_native.py``
loads it: ``DLRM_DCN`` (tables ``t_cat_k`` on the meta device, 512-256-128 bottom MLP, three
low-rank-512 cross layers, 1024-1024-512-256-1 top MLP) inside ``DLRMTrain``, planned and
wrapped by ``DistributedModelParallel`` on a one-rank gloo group, so the tables are saved as
torchrec shards them; then ``Snapshot.take(OUT/snapshot, {"model": model})``. It feeds rows
whose indices run past the tables (hashed ``% rows`` as the reference's ``--max-ind-range``
does before torchrec sees them) and writes ``OUT/rows.npz``: ``dense`` [N, 13], ``sparse``
[N, 214] (mlpi's layout, unhashed) and ``prediction`` [N] (torchrec's sigmoid of the logit).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np


def _free_port() -> str:
    """A port no one listens on: test workers writing checkpoints at once each need their own."""
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return str(probe.getsockname()[1])


def main(out: Path, rows: int) -> None:
    import torch
    from torch import distributed as dist
    from torchrec import EmbeddingBagCollection, KeyedJaggedTensor
    from torchrec.datasets.criteo import DEFAULT_CAT_NAMES, DEFAULT_INT_NAMES
    from torchrec.datasets.utils import Batch
    from torchrec.distributed.comm import get_local_size
    from torchrec.distributed.model_parallel import (
        DistributedModelParallel,
        get_default_sharders,
    )
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.storage_reservations import (
        HeuristicalStorageReservation,
    )
    from torchrec.models.dlrm import DLRM_DCN, DLRMTrain
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchsnapshot import Snapshot

    from mlpi.models.dlrm_config import HOTNESS, Tables

    sizes = Tables(rows).sizes
    os.environ.update(WORLD_SIZE="1", RANK="0", MASTER_ADDR="localhost", MASTER_PORT=os.environ.get("MASTER_PORT") or _free_port())
    dist.init_process_group(backend="gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    tables = [EmbeddingBagConfig(name=f"t_{name}", embedding_dim=128, num_embeddings=sizes[k], feature_names=[name])
              for k, name in enumerate(DEFAULT_CAT_NAMES)]
    dlrm = DLRM_DCN(
        embedding_bag_collection=EmbeddingBagCollection(tables=tables, device=torch.device("meta")),
        dense_in_features=len(DEFAULT_INT_NAMES), dense_arch_layer_sizes=[512, 256, 128],
        over_arch_layer_sizes=[1024, 1024, 512, 256, 1], dcn_num_layers=3, dcn_low_rank_dim=512,
        dense_device=torch.device("cpu"),
    )
    model = DLRMTrain(dlrm)
    planner = EmbeddingShardingPlanner(
        topology=Topology(local_world_size=get_local_size(), world_size=1, compute_device="cpu"),
        storage_reservation=HeuristicalStorageReservation(percentage=0.05),
    )
    plan = planner.collective_plan(model, get_default_sharders(), dist.GroupMember.WORLD)
    model = DistributedModelParallel(module=model, device=torch.device("cpu"), plan=plan)
    with torch.no_grad():  # torchrec's zero cross biases would leave them untested
        for name, tensor in model.named_parameters():
            if ".crossnet.bias." in name:
                tensor.uniform_(-0.1, 0.1)
    Snapshot.take(path=str(out / "snapshot"), app_state={"model": model})

    rng = np.random.default_rng(1)
    n = 64
    dense = rng.standard_normal((n, 13)).astype(np.float32)
    sparse = np.concatenate([rng.integers(0, 3 * sizes[k] + 5, (n, h)) for k, h in enumerate(HOTNESS)], axis=1).astype(np.int32)
    offsets = np.concatenate(([0], np.cumsum(HOTNESS)))
    values, lengths = [], []
    for k, hot in enumerate(HOTNESS):  # KJT: feature-major, each row's indices of feature k
        values.append((sparse[:, offsets[k]:offsets[k + 1]] % sizes[k]).reshape(-1))
        lengths.append(np.full(n, hot))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(DEFAULT_CAT_NAMES), values=torch.from_numpy(np.concatenate(values).astype(np.int64)),
        lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32)))
    model.eval()
    with torch.no_grad():
        _, (_, logits, _) = model(Batch(dense_features=torch.from_numpy(dense), sparse_features=kjt,
                                        labels=torch.zeros(n)))
    prediction = torch.sigmoid(logits).reshape(-1).numpy()
    np.savez(out / "rows.npz", dense=dense, sparse=sparse, prediction=prediction)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
