"""Barlow Twins (and VICReg, InfoNCE) under DDP: two CPU processes (gloo), each with half the batch, compute the same loss
and, after DDP's gradient averaging, the same gradients as one process on the concatenated batch."""
import os, socket
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ecg_study.run_config import TrainConfig
from ecg_study.stage_modules import PretrainModule

N, L, N_CONT, CATS = 8, 250, 5, [3, 4]
LOSSES = ("barlow_twins", "vicreg", "info_nce")

def _module(loss: str) -> PretrainModule:
    torch.manual_seed(0)
    cfg = TrainConfig(d_model=8, n_layers=1, d_state=4, dropout=0.0, tab_hidden=(8, 8), tab_dropout=0.0,
                      projector_dims=(16, 6), loss=loss, lambd=0.1)
    return PretrainModule.build(cfg, N_CONT, CATS).train()

def _batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(N, L, 12, generator=g), "tab_cont": torch.randn(N, N_CONT, generator=g),
            "tab_mask": torch.ones(N, N_CONT), "tab_cat": torch.stack([torch.randint(0, c, (N,), generator=g) for c in CATS], 1)}

def _step(m: PretrainModule, batch: dict) -> tuple[float, dict]:
    "The module's training step (as Lightning runs it) and the gradients DDP would apply (averaged over ranks)."
    m.zero_grad()
    loss = m.training_step(batch, 0)
    loss.backward()
    grads = {}
    for k, p in m.named_parameters():
        if p.grad is None: continue
        g = p.grad.clone()
        if dist.is_initialized(): dist.all_reduce(g); g /= dist.get_world_size()
        grads[k] = g
    return float(loss.detach()), grads

class _OnRank(PretrainModule):
    "The module as Lightning's DDP strategy sets it up on one of two ranks (only `world_size` is read of the trainer)."
    trainer = property(lambda self: type("T", (), {"world_size": 2})())

def _rank(rank: int, port: int, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    for loss in LOSSES:
        m = _module(loss)
        m.__class__, m.log_dict = _OnRank, lambda *a, **k: None
        m.setup("fit")
        half = {k: v[rank * N // 2:(rank + 1) * N // 2] for k, v in _batch().items()}
        out[loss, rank] = _step(m, half)
    dist.destroy_process_group()

def _free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

@pytest.fixture(scope="module")
def two_ranks():
    "Each loss's step on two gloo ranks, each holding half of the batch."
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), out), nprocs=2, join=True)
    return dict(out)

@pytest.mark.parametrize("loss", LOSSES)
def test_two_ranks_equal_one_process_on_the_whole_batch(loss, two_ranks):
    m = _module(loss)
    m.log_dict = lambda *a, **k: None
    ref_loss, ref_grads = _step(m, _batch())
    for rank in (0, 1):
        got_loss, got = two_ranks[loss, rank]
        assert abs(got_loss - ref_loss) < 1e-5 * max(1, abs(ref_loss)), (rank, got_loss, ref_loss)
        assert got.keys() == ref_grads.keys()
        scale = max(float(g.abs().max()) for g in ref_grads.values())   # float32 sums in another order: relative to the largest gradient
        for k in ref_grads: torch.testing.assert_close(got[k], ref_grads[k], rtol=1e-3, atol=1e-4 * scale, msg=f"rank {rank}: {k}")
