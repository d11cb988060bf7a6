"""What a fit of the default study could be made cheaper by, without changing its recipe: batch size, torch.compile,
and how much of an epoch validation takes.

Usage:
  MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \
  .venv/bin/python benchmarks/bench_fit_levers.py [--rounds 3] [--steps 20] [--train 1856] [--val 205] [--json out.json]

The `quick` plan's diagnosis model, built as the study builds it (`stage_modules.DiagnosisModule` of the plan's
`[defaults]`: S4 2 × 64, d_state 8, its head, masked BCE, its AdamW groups; `freeze_depth` frozen by
`models.freeze_encoder`), 116 labels, one torch thread (as `make study` runs each step), random (B, 250, 12) crops:
- training samples/s for batch 32, 64, 128 and 256, with the input projection and first S4 layer frozen (the method's
  diagnosis fit) and with nothing frozen (ECG-only), best of `--rounds` × `--steps` steps after 3 warm-up steps;
- a torch profile of that step at batch 64, nothing frozen: the shares of the 1 × 1 convolutions, the FFTs and the rest;
- the same training step at batch 64 under `torch.compile` (inductor, static shapes) against eager, compile time included
  separately;
- evaluation windows/s (eval-mode forward of 4 windows × 64 records under `inference_mode`), and from both rates the
  share of an epoch that validating `--val` records on their 4 windows takes beside training `--train` crops.
"""
import argparse, json, os, platform, sys, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ecg_study.plans import load_plan  # noqa: E402
from ecg_study.run_config import TrainConfig  # noqa: E402
from ecg_study.stage_modules import DiagnosisModule  # noqa: E402

L, C, K = 250, 12, 116
CFG = TrainConfig.from_dict({k: v for k, v in load_plan("quick")["defaults"].items() if k != "seeds"})


def model(freeze: int):
    "A fresh diagnosis module of the plan's sizes, first `freeze` S4 layers (and the input projection) frozen."
    torch.manual_seed(0)
    module = DiagnosisModule.build(CFG, K, None, freeze)
    return module, module.configure_optimizers()


def best_rate(fn, n_items: int, rounds: int, steps: int) -> float:
    "Items per second of `fn`, best round of `steps` calls after 3 warm-up calls."
    for _ in range(3): fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(steps): fn()
        best = min(best, (time.perf_counter() - t) / steps)
    return n_items / best


def train_step(module, opt, batch):
    "One optimiser step on `batch`, through the module's own loss."
    def step():
        opt.zero_grad()
        module.losses(batch)["loss"].backward()
        opt.step()
    return step


def batch_of(n: int, g: torch.Generator) -> dict:
    y = (torch.rand(n, K, generator=g) < .1).float()
    return {"x": torch.randn(n, L, C, generator=g), "y": y, "y_mask": torch.ones_like(y, dtype=torch.bool)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--train", type=int, default=1856, help="training records of one part (default study: 1,856)")
    ap.add_argument("--val", type=int, default=205, help="validation records of one part (default study: 205)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "malloc_tuned": "MALLOC_MMAP_THRESHOLD_" in os.environ, "train_samples_per_s": {}}
    g = torch.Generator().manual_seed(0)
    for freeze in (1, 0):
        for bs in (32, 64, 128, 256):
            r = best_rate(train_step(*model(freeze), batch_of(bs, g)), bs, a.rounds, a.steps)
            out["train_samples_per_s"][f"freeze{freeze}_bs{bs}"] = round(r, 1)
            print(f"train freeze_depth {freeze} batch {bs:3d}: {r:7.1f} samples/s", flush=True)
    batch = batch_of(64, g)
    step = train_step(*model(0), batch)
    eager = best_rate(step, 64, a.rounds, a.steps)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof: [step() for _ in range(10)]
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(ops.values())
    share = lambda f: round(sum(v for k, v in ops.items() if f(k)) / total, 3)
    out["profile_share"] = {"conv_1x1": share(lambda k: "convolution" in k), "fft": share(lambda k: "_fft_" in k)}
    out["profile_share"]["rest"] = round(1 - sum(out["profile_share"].values()), 3)
    print("profile of a step (self CPU time):", out["profile_share"])
    compiled, opt_c = model(0)
    compiled.ecg = torch.compile(compiled.ecg, dynamic=False)    # the encoder is the whole cost; the head is one Linear
    step_c = train_step(compiled, opt_c, batch)
    t = time.perf_counter(); step_c(); compile_s = time.perf_counter() - t
    comp = best_rate(step_c, 64, a.rounds, a.steps)
    out |= {"compile_seconds": round(compile_s, 1), "eager_samples_per_s": round(eager, 1),
            "compiled_samples_per_s": round(comp, 1), "compiled_over_eager": round(comp / eager, 3)}
    print(f"torch.compile: {comp:.1f} against eager {eager:.1f} samples/s (× {comp / eager:.2f}); compile {compile_s:.0f} s")
    module, _ = model(0); module.eval()
    xw = torch.randn(4 * 64, L, C, generator=g)
    with torch.inference_mode():
        ev = best_rate(lambda: module.logits(xw, None), 4 * 64, a.rounds, max(3, a.steps // 4))
    for freeze in (1, 0):
        tr = out["train_samples_per_s"][f"freeze{freeze}_bs64"]
        val_s, train_s = 4 * a.val / ev, a.train / tr
        out[f"val_share_freeze{freeze}"] = round(val_s / (val_s + train_s), 3)
        print(f"validation share of an epoch, freeze_depth {freeze}: {val_s / (val_s + train_s):.2f} "
              f"({val_s:.2f} s of {val_s + train_s:.2f} s)")
    out["eval_windows_per_s"] = round(ev, 1)
    print(f"evaluation: {ev:.1f} windows/s")
    if a.json: a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
