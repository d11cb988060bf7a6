"""Training throughput, peak memory and achieved FLOP/s of the ECG encoders.

Usage: .venv/bin/python benchmarks/bench_encoders.py [--device cpu|cuda] [--lengths 250 1000]
       [--batch 32] [--models s4 s4_reference resnet1d] [--rounds 5] [--tuned-malloc] [--json out.json]

Models (all (B, L, 12) → (B, 512)):
  s4            ecg_study.s4.S4Encoder at the paper size (4 × 512, d_state 8, dropout 0.2, bidirectional)
  s4_reference  a straightforward S4D of the same size (the state-spaces S4D example: (B, H, L) layout,
                Conv1d GLU projection, autograd through the FFTs, explicit D skip), for comparison
  resnet1d      a 1D ResNet of similar parameter count (BasicBlock1d, widths 64-128-192-256)
One training step = forward + backward of mean(encoder(x)²) on a random batch, train mode, no optimiser
step. Timing: the models of one length are built side by side and timed in interleaved rounds (the best
step of each is kept), so a shared, busy machine slows them alike. Peak memory: one step of each
(model, length) alone in a subprocess — on CPU the growth of the peak resident set over the footprint
just before the step (activations, gradients, workspaces; Linux VmHWM after resetting it through
/proc/self/clear_refs), on CUDA torch.cuda.max_memory_allocated.

FLOPs per step: matrix multiplies and convolutions counted by torch.utils.flop_counter.FlopCounterMode over
a real forward + backward, plus, for the S4 models, the FFT convolution counted analytically for the
work the algorithm needs (the same nominal count for both S4 implementations): per channel and sample,
4 real FFTs of size 2L (forward: input and output; backward: output gradient and input gradient) at
2.5·n·log2(n) each, and 3 complex multiplies per frequency (6 flops each). Element-wise work (GELU, GLU,
LayerNorm, dropout) is not counted. Achieved FLOP/s = FLOPs per step / best step time; the machine's
matrix-multiply rate is the best time of a 4096² float32 matmul, measured in every round (best-of-N on
both sides). For context the
script also reports the rate of a kernel-size-1 Conv1d of the S4 layer's GLU-projection shape (32 × 512
× 250 → 1024; oneDNN on CPU), the GEMM the S4 encoder actually runs.
"""
import argparse, json, math, os, platform, re, subprocess, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ecg_study.s4 import S4Encoder  # noqa: E402


# ---------------------------------------------------------------- comparison models
class ReferenceS4D(nn.Module):
    "The straightforward S4D layer (state-spaces S4D example, made bidirectional) on (B, H, L)."
    def __init__(self, H, N=8, dropout=0.2):
        super().__init__()
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.C = nn.Parameter(torch.view_as_real(torch.randn(2, H, N // 2, dtype=torch.cfloat)))
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(H, N // 2)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(N // 2).repeat(H, 1).float())
        self.D = nn.Parameter(torch.randn(H))
        self.dropout = nn.Dropout1d(dropout)
        self.output_linear = nn.Sequential(nn.Conv1d(H, 2 * H, 1), nn.GLU(dim=-2))

    def forward(self, u):
        L = u.size(-1)
        A = -torch.exp(self.log_A_real) + 1j * self.A_imag
        dtA = A * torch.exp(self.log_dt)[:, None]
        C = torch.view_as_complex(self.C) * (torch.exp(dtA) - 1.) / A
        k = 2 * torch.einsum("chn,hnl->chl", C, torch.exp(dtA.unsqueeze(-1) * torch.arange(L, device=u.device))).real
        k = F.pad(k[0], (0, L)) + F.pad(k[1].flip(-1), (L, 0))
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
        y = y + u * self.D.unsqueeze(-1)
        return self.output_linear(self.dropout(F.gelu(y)))


class ReferenceS4Encoder(nn.Module):
    "Linear → n × (x + dropout(S4D(x)), post LayerNorm) → mean, with the reference layer."
    def __init__(self, d_model=512, n_layers=4, d_state=8, dropout=0.2):
        super().__init__()
        self.input_proj = nn.Linear(12, d_model)
        self.layers = nn.ModuleList(ReferenceS4D(d_model, d_state, dropout) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.dropouts = nn.ModuleList(nn.Dropout1d(dropout) for _ in range(n_layers))

    def forward(self, x):
        x = self.input_proj(x).transpose(-1, -2)
        for layer, norm, drop in zip(self.layers, self.norms, self.dropouts):
            x = norm((x + drop(layer(x))).transpose(-1, -2)).transpose(-1, -2)
        return x.mean(-1)


class BasicBlock1d(nn.Module):
    def __init__(self, c_in, c_out, stride=1, k=5):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, k, 1, k // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.down = (nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm1d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        return F.relu(self.down(x) + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNet1d(nn.Module):
    "1D ResNet: stem conv (stride 2) + max-pool, 4 stages × 2 basic blocks (stride 2 from stage 2), global average pool, Linear → 512."
    def __init__(self, d_input=12, widths=(64, 128, 192, 256), d_out=512):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(d_input, widths[0], 7, 2, 3, bias=False), nn.BatchNorm1d(widths[0]),
                                  nn.ReLU(), nn.MaxPool1d(3, 2, 1))
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [BasicBlock1d(c, w, 1 if i == 0 else 2), BasicBlock1d(w, w)]
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, d_out)

    def forward(self, x): return self.head(self.blocks(self.stem(x.transpose(1, 2))).mean(-1))


MODELS = {"s4": lambda: S4Encoder(12, 512, 4, 8, 0.2, True),
          "s4_reference": lambda: ReferenceS4Encoder(512, 4, 8, 0.2),
          "resnet1d": lambda: ResNet1d()}


# ---------------------------------------------------------------- measurement (one subprocess per model × length)
def fft_flops(model_name, B, L, H=512, n_layers=4):
    "Nominal FFT-convolution FLOPs of one training step (see module docstring); 0 for non-S4 models."
    if not model_name.startswith("s4"): return 0
    n = 2 * L
    return n_layers * B * H * (4 * 2.5 * n * math.log2(n) + 3 * 6 * (L + 1))


def sync(device):
    if device == "cuda": torch.cuda.synchronize()


def best_time(fn, device, reps, warmup=2):
    for _ in range(warmup): fn()
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter(); fn(); sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def matmul_rate(device, n=4096, reps=5):
    "FLOP/s of the best of `reps` float32 n × n matmuls (torch.mm: MKL on CPU, cuBLAS on CUDA)."
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / best_time(lambda: a @ b, device, reps)


def conv1x1_rate(device, B=32, L=250, H=512, reps=5):
    "FLOP/s of a kernel-size-1 Conv1d H → 2H on (B, H, L) — the S4 layer's GLU projection (oneDNN on CPU)."
    x, w = torch.randn(B, H, L, device=device), torch.randn(2 * H, H, 1, device=device)
    return 2 * B * L * H * 2 * H / best_time(lambda: F.conv1d(x, w), device, reps)


def make(name, L, B, device):
    "Model `name` in train mode, a random (B, L, 12) batch, and a training-step closure."
    torch.manual_seed(0)
    model = MODELS[name]().to(device).train()
    x = torch.randn(B, L, 12, device=device)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
    return model, step


def _proc_status_kb(field):
    "A memory field (kB) of /proc/self/status (Linux)."
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def peak_memory(name, L, B, device):
    "Peak memory (MB) of one training step over the footprint right before it (run alone in a subprocess)."
    _, step = make(name, L, B, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step(); sync(device)
        return torch.cuda.max_memory_allocated() / 2 ** 20
    # ru_maxrss survives exec (it would report the parent's peak): reset the kernel's high-water mark instead
    Path("/proc/self/clear_refs").write_text("5")
    base_kb = _proc_status_kb("VmRSS")
    step()
    return (_proc_status_kb("VmHWM") - base_kb) / 1024


def measure(names, L, B, device, rounds):
    "Best step time of each model and best matmul / 1×1-conv rates, interleaved over `rounds` rounds."
    built = {n: make(n, L, B, device) for n in names}
    best = {n: float("inf") for n in names}
    mm = c1 = 0.0
    for _ in range(rounds):
        mm, c1 = max(mm, matmul_rate(device, reps=2)), max(c1, conv1x1_rate(device, reps=2))
        for n, (_, step) in built.items():
            best[n] = min(best[n], best_time(step, device, reps=2, warmup=1))
    rows = []
    for n, (model, step) in built.items():
        with FlopCounterMode(display=False) as counter: step()
        flops = counter.get_total_flops() + fft_flops(n, B, L)
        rows.append(dict(model=n, L=L, batch=B, device=device, threads=torch.get_num_threads(),
                         params=sum(p.numel() for p in model.parameters()), step_ms=best[n] * 1e3,
                         samples_per_s=B / best[n], gflop_per_step=flops / 1e9, achieved_gflops=flops / best[n] / 1e9,
                         matmul_gflops=mm / 1e9, fraction_of_matmul=flops / best[n] / mm, conv1x1_gflops=c1 / 1e9))
    return rows


# glibc returns large blocks (>= 32 MB, e.g. one (32, 512, 1000) activation) to the OS on free and
# maps them again on the next allocation, so every step page-faults its activations in afresh. These two
# settings keep freed memory in the heap; they must be set before the process starts.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 32), "MALLOC_TRIM_THRESHOLD_": str(2 ** 36)}


# ---------------------------------------------------------------- report
def machine(device):
    if device == "cuda": return torch.cuda.get_device_name()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", lscpu)
    return f"{model.group(1).strip() if model else platform.processor()}, {os.cpu_count()} cores"


def table(rows):
    lines = ["| model | params | L | samples/s | step ms | peak MB | GFLOP/step | achieved GFLOP/s | matmul GFLOP/s | fraction | 1×1-conv GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['L']} | {r['samples_per_s']:.1f} | {r['step_ms']:.0f} | "
                     f"{r['peak_mb']:.0f} | {r['gflop_per_step']:.1f} | {r['achieved_gflops']:.1f} | {r['matmul_gflops']:.1f} | "
                     f"{r['fraction_of_matmul']:.2f} | {r['conv1x1_gflops']:.0f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--lengths", type=int, nargs="+", default=[250, 1000])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (2 steps per model each; best is kept)")
    ap.add_argument("--json", type=Path, help="also write all rows to this JSON file")
    ap.add_argument("--tuned-malloc", action="store_true",
                    help="re-run under glibc settings that keep freed memory in the heap (see TUNED_MALLOC)")
    ap.add_argument("--memory-worker", nargs=2, metavar=("MODEL", "L"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available(): sys.exit("bench_encoders: --device cuda but CUDA is not available")
    if args.tuned_malloc and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED_MALLOC})
    if args.memory_worker:
        print(peak_memory(args.memory_worker[0], int(args.memory_worker[1]), args.batch, args.device))
        return
    rows, load_before = [], os.getloadavg()
    for L in args.lengths:
        for row in measure(args.models, L, args.batch, args.device, args.rounds):
            out = subprocess.run([sys.executable, __file__, "--memory-worker", row["model"], str(L), "--device", args.device,
                                  "--batch", str(args.batch)], capture_output=True, text=True)
            if out.returncode: sys.exit(f"bench_encoders: memory worker {row['model']} L={L} failed:\n{out.stderr}")
            row["peak_mb"] = float(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    alloc = "tuned glibc malloc" if all(os.environ.get(k) == v for k, v in TUNED_MALLOC.items()) else "default glibc malloc"
    load = f"{alloc}; 1-min load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"\nmachine: {machine(args.device)}; torch {torch.__version__}; {torch.get_num_threads()} threads; batch {args.batch}; {load}\n")
    print(table(rows))
    if args.json: args.json.write_text(json.dumps(dict(machine=machine(args.device), torch=torch.__version__, load=load, rows=rows), indent=1))

if __name__ == "__main__":
    main()
