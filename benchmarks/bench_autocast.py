"""CPU bf16 autocast vs float32 for the default study's training step: speed and equality of results.

Usage: .venv/bin/python benchmarks/bench_autocast.py [--rounds 5] [--steps 20] [--train-steps 30] [--json out.json]
(re-executes itself under the study's glibc malloc settings, MALLOC_MMAP_THRESHOLD_=2^32 and
MALLOC_TRIM_THRESHOLD_=2^36, as `make study` exports them, unless --default-malloc is given).

Model: the default (`quick`) plan's ECG encoder, ecg_study.s4.S4Encoder(d_input=12, d_model=64, n_layers=2,
d_state=8, dropout=0.1) (bidirectional), a Linear head 64 → 116, BCE with logits (float32, as
ecg_study.objectives.masked_bce), AdamW over ecg_study.s4.ssm_parameter_groups(lr 5e-3, weight decay 1e-3,
lr_ssm 2e-3); batch 64 crops of (250, 12) float32; ONE torch thread (the study runs two steps at a time, one
core each).

Speed: one training step = zero_grad + forward + backward + optimizer step, train mode. fp32 and bf16
(`torch.autocast("cpu", dtype=torch.bfloat16)` around forward and loss, as Lightning's "bf16-mixed") are
timed in interleaved rounds of `--steps` steps after warm-up; the best round of each is kept. Inference:
eval mode, torch.inference_mode, one forward of 4 windows × 64 records = (256, 250, 12), best of
`--rounds` rounds × 5 calls.

Equality: both modes start from the same initial weights and see the same 30 batches (fixed, generated
once) with the same dropout RNG seed; reported are the max abs difference of the logits and probabilities
on a fixed held-out batch (eval mode, each model in its own precision), the relative difference of the
final training losses (and the largest relative loss difference over the steps), and — as the yardstick —
the same differences between two fp32 runs that differ only in the dropout seed. Also the one-forward difference from identical weights (pure rounding).
"""
import argparse, json, os, platform, re, subprocess, sys, time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ecg_study.s4 import S4Encoder, ssm_parameter_groups  # noqa: E402

TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 32), "MALLOC_TRIM_THRESHOLD_": str(2 ** 36)}
B, L, C, K = 64, 250, 12, 116            # batch, crop length (2.5 s at 100 Hz), leads, outputs


class Model(nn.Module):
    "Default-study encoder + linear head."
    def __init__(self):
        super().__init__()
        self.ecg = S4Encoder(d_input=C, d_model=64, n_layers=2, d_state=8, dropout=0.1)
        self.head = nn.Linear(64, K)

    def forward(self, x): return self.head(self.ecg(x))


def build(seed=0):
    torch.manual_seed(seed)
    model = Model().train()
    opt = torch.optim.AdamW(ssm_parameter_groups(model, lr=5e-3, weight_decay=1e-3, lr_ssm=2e-3))
    return model, opt


def ctx(bf16): return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def train_step(model, opt, x, y, bf16):
    opt.zero_grad(set_to_none=True)
    with ctx(bf16):
        loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
    loss.backward()
    opt.step()
    return loss.detach()


def batches(n, seed):
    "n fixed (x, y) batches; y depends on the leads' means so the loss can go down."
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, K, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(B, L, C, generator=g)
        x = x + torch.randn(B, 1, C, generator=g)                   # a per-record offset the labels read
        y = ((x.mean(1) @ w) > 0.5).float()
        out.append((x, y))
    return out


# ---------------------------------------------------------------- speed
def speed(rounds, steps):
    data = batches(4, seed=1)
    runs = {m: build(0) for m in ("fp32", "bf16")}
    best = {m: 0.0 for m in runs}
    for m, (model, opt) in runs.items():                           # warm-up
        for i in range(5): train_step(model, opt, *data[i % 4], m == "bf16")
    for _ in range(rounds):
        for m, (model, opt) in runs.items():
            t = time.perf_counter()
            for i in range(steps): train_step(model, opt, *data[i % 4], m == "bf16")
            best[m] = max(best[m], steps / (time.perf_counter() - t))
    # inference: 4 windows × 64 records
    xi = torch.randn(4 * B, L, C, generator=torch.Generator().manual_seed(2))
    inf = {m: 0.0 for m in runs}
    for m, (model, _) in runs.items():
        model.eval()
        with torch.inference_mode(), ctx(m == "bf16"): model(xi)
    for _ in range(rounds):
        for m, (model, _) in runs.items():
            with torch.inference_mode(), ctx(m == "bf16"):
                t = time.perf_counter()
                for _ in range(5): model(xi)
                inf[m] = max(inf[m], 5 / (time.perf_counter() - t))
    return best, inf


def profile_top(n=8):
    "Self-CPU time of the top ops of 5 training steps in each mode (where the time goes)."
    from torch.profiler import ProfilerActivity, profile
    data = batches(1, seed=1)
    out = {}
    for m in ("fp32", "bf16"):
        model, opt = build(0)
        for _ in range(3): train_step(model, opt, *data[0], m == "bf16")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5): train_step(model, opt, *data[0], m == "bf16")
        ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:n]
        out[m] = [(e.key, e.self_cpu_time_total / 5e3) for e in ev]   # ms per step
    return out


# ---------------------------------------------------------------- equality
def train_run(bf16, data, dropout_seed):
    model, opt = build(0)
    torch.manual_seed(dropout_seed)
    losses = [float(train_step(model, opt, x, y, bf16)) for x, y in data]
    return model, losses


def eval_logits(model, x, bf16):
    model.eval()
    with torch.inference_mode(), ctx(bf16): return model(x).float()


def equality(n_steps):
    data = batches(n_steps, seed=3)
    x_fix, _ = batches(1, seed=4)[0]
    m0, _ = build(0)                                               # identical weights, one forward
    lo32, lo16 = eval_logits(m0, x_fix, False), eval_logits(m0, x_fix, True)
    runs = {"fp32": train_run(False, data, 0), "bf16": train_run(True, data, 0), "fp32_seed1": train_run(False, data, 1)}
    logit = {k: eval_logits(m, x_fix, k == "bf16") for k, (m, _) in runs.items()}

    def cmp(a, b):
        la, lb = runs[a][1], runs[b][1]
        return dict(max_abs_logit=float((logit[a] - logit[b]).abs().max()),
                    max_abs_prob=float((logit[a].sigmoid() - logit[b].sigmoid()).abs().max()),
                    rel_final_loss=abs(la[-1] - lb[-1]) / la[-1],
                    rel_last5_loss=abs(sum(la[-5:]) - sum(lb[-5:])) / sum(la[-5:]),
                    max_rel_loss=max(abs(u - v) / u for u, v in zip(la, lb)))
    return dict(init_forward=dict(max_abs_logit=float((lo32 - lo16).abs().max()),
                                  max_abs_prob=float((lo32.sigmoid() - lo16.sigmoid()).abs().max()),
                                  logit_scale=float(lo32.abs().max())),
                bf16_vs_fp32=cmp("fp32", "bf16"), fp32_dropout_seed=cmp("fp32", "fp32_seed1"),
                logit_scale=float(logit["fp32"].abs().max()),
                losses={k: [round(v, 5) for v in r[1]] for k, r in runs.items()})


# ---------------------------------------------------------------- report
def machine():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", lscpu)
    flags = set((re.search(r"Flags:\s*(.+)", lscpu) or re.search("()", "")).group(1).split())
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16") if f in flags]
    return (f"{model.group(1).strip() if model else platform.processor()}, {os.cpu_count()} cores, "
            f"flags: {' '.join(isa) or 'none of avx512f/avx512_bf16/amx'}; oneDNN ISA {torch.backends.cpu.get_cpu_capability()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--default-malloc", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.default_malloc and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED_MALLOC})
    torch.set_num_threads(1)
    t0, load0 = time.time(), os.getloadavg()[0]
    train, inf = speed(args.rounds, args.steps)
    eq = equality(args.train_steps)
    prof = None if args.no_profile else profile_top()
    alloc = "tuned" if all(os.environ.get(k) == v for k, v in TUNED_MALLOC.items()) else "default"
    info = dict(machine=machine(), torch=torch.__version__, threads=torch.get_num_threads(), malloc=alloc,
                date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                load=f"1-min load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after", seconds=round(time.time() - t0, 1))
    print(f"machine: {info['machine']}; torch {info['torch']}; {info['threads']} thread; {alloc} glibc malloc; "
          f"{info['date']}; {info['load']}; {info['seconds']} s\n")
    print("| | fp32 | bf16 autocast | bf16 / fp32 |\n|---|---|---|---|")
    print(f"| training steps/s (batch {B}, best of {args.rounds} × {args.steps}) | {train['fp32']:.2f} | {train['bf16']:.2f} | "
          f"{train['bf16'] / train['fp32']:.2f} |")
    print(f"| inference forwards/s (4 × {B} windows) | {inf['fp32']:.2f} | {inf['bf16']:.2f} | {inf['bf16'] / inf['fp32']:.2f} |")
    e, b, s = eq["init_forward"], eq["bf16_vs_fp32"], eq["fp32_dropout_seed"]
    print(f"\nsame weights, one forward: max |Δ logit| {e['max_abs_logit']:.2e} (max |logit| {e['logit_scale']:.2f}), "
          f"max |Δ p| {e['max_abs_prob']:.2e}")
    print(f"after {args.train_steps} steps (max |logit| {eq['logit_scale']:.2f}):\n| comparison | max |Δ logit| | max |Δ p| | "
          "rel. Δ final loss | rel. Δ mean of last 5 losses | max rel. Δ loss over the steps |\n|---|---|---|---|---|---|")
    for name, r in (("bf16 vs fp32 (same seed)", b), ("fp32 vs fp32, other dropout seed", s)):
        print(f"| {name} | {r['max_abs_logit']:.2e} | {r['max_abs_prob']:.2e} | {r['rel_final_loss']:.2e} | {r['rel_last5_loss']:.2e} | {r['max_rel_loss']:.2e} |")
    print("final losses:", {k: v[-1] for k, v in eq["losses"].items()})
    if prof:
        for m, rows in prof.items():
            print(f"\ntop self-CPU ops, {m} (ms per step): " + ", ".join(f"{k} {v:.1f}" for k, v in rows))
    if args.json:
        args.json.write_text(json.dumps(dict(info, train_steps_per_s=train, inference_per_s=inf, equality=eq, profile=prof), indent=1))


if __name__ == "__main__":
    main()
