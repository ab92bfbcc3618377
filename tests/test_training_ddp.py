"""DistributedDataParallel on 2 CPU processes over gloo: masks identical on both ranks, sparsity kept."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        import prunekit
        from prunekit.core.schedules import GMP
        from prunekit.data import TensorData
        from prunekit.training import CosineLR, GMPCallback, PruneSpec, Trainer
        from prunekit.training.distributed import masks_identical_across_ranks

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        # Deliberately different masks per rank: the Trainer must make rank 0's the truth.
        masks = prunekit.prune(model, 0.5, method="random", seed=rank)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, 8, generator=g)
        data = TensorData(x, (x[:, :3]).argmax(1))
        gmp = GMPCallback(
            GMP(0.8, start=2, end=8, frequency=2, initial_sparsity=0.5), PruneSpec(0.8)
        )
        trainer = Trainer(
            model,
            data,
            val_data=data,
            lr_schedule=CosineLR(0.1, 10),
            batch_size=8,
            masks=masks,
            callbacks=[gmp],
            seed=0,
        )
        assert trainer.distributed and trainer.iters_per_epoch == 4  # 32 examples per rank
        trainer.fit()
        same = masks_identical_across_ranks(trainer.masks)
        metrics = trainer.evaluate(data)
        trainer.masks.save(os.path.join(out_dir, f"masks{rank}.safetensors"))
        params = dict(model.named_parameters())
        nonzero = {n: int((params[n] != 0).sum()) for n in trainer.masks}
        kept = {n: int(m.sum()) for n, m in trainer.masks.items()}
        weights = {n: p.detach().flatten().tolist() for n, p in params.items()}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump(
                {
                    "same": same,
                    "nonzero": nonzero,
                    "kept": kept,
                    "metrics": metrics,
                    "sparsity": trainer.masks.sparsity,
                    "weights": weights,
                },
                fh,
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed"
)
def test_ddp_two_cpu_ranks_share_masks_and_keep_sparsity(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    from prunekit.core.masks import MaskSet

    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["same"] and r1["same"]
    m0, m1 = (
        MaskSet.load(tmp_path / "masks0.safetensors"),
        MaskSet.load(tmp_path / "masks1.safetensors"),
    )
    assert all(torch.equal(m0[n], m1[n]) for n in m0)
    assert r0["sparsity"] == pytest.approx(0.8, abs=1 / 176)
    assert r0["nonzero"] == r0["kept"]  # no pruned weight came back to life
    assert r0["weights"] == r1["weights"]  # DDP kept the replicas identical
    assert r0["metrics"] == r1["metrics"]  # evaluation is reduced over both shards
