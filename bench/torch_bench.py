#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# PyTorch counterparts of attend-bench's shapes, written as Google Benchmark-shaped JSON.
"""Times PyTorch on the shapes of bench/bench_attention.cpp and bench_rnn.cpp, 1 and 2 threads.

Run with Debian's interpreter (python3-torch 1.13), not a pyenv `python3`:

    /usr/bin/python3 bench/torch_bench.py --out build/torch_bench.json

Benchmarks (float32, CPU, torch.no_grad()):
  Torch_Mm/2048                       torch.mm of two [2048, 2048]   <-> BM_Sgemm/2048
  Torch_MatmulSoftmaxMatmul/L         softmax(q @ k^T * scale) @ v, q, k, v [1, 8, L, 64]
                                                                     <-> BM_SdpaReference/L
  Torch_MultiheadAttention/L          nn.MultiheadAttention(512, 8), eval, x [L, 1, 512]
                                      (batch_first=False: the composite Python path)
                                                                     <-> BM_MultiheadAttention/L
  Torch_MultiheadAttentionFastPath/L  the same module with batch_first=True, x [1, L, 512]:
                                      eval + no_grad + need_weights=False take torch's
                                      fused native path (_native_multi_head_attention)
  Torch_LSTM                          nn.LSTM(256, 512, num_layers=2), eval, x [64, 16, 256]
                                      (T, B, input), zero initial state  <-> BM_LSTM

Threads: torch.set_num_threads(n) sets torch's OpenMP intra-op pool only. Debian's torch
calls the system OpenBLAS (pthreads build) for matmul, and OpenBLAS's pool follows
OPENBLAS_NUM_THREADS, read once when the library loads. So each thread count runs in a
fresh child process with OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = n set before torch is
imported, and the child also calls torch.set_num_threads(n); it records both counts as
seen from inside (openblas_get_num_threads through ctypes, torch.get_num_threads).

Timing mimics Google Benchmark: a warm-up call, then the iteration count doubles (or
scales) until one batch takes at least --min-time seconds; that batch size is reused for
--repetitions repetitions. Only aggregates are written (mean, median, stddev, cv), like
--benchmark_report_aggregates_only=true. real_time is wall clock (time.perf_counter),
cpu_time is the whole process's CPU time (time.process_time, summed over threads), and
FLOPS is FLOP per iteration / cpu_time, as Google Benchmark computes a kIsRate counter.
With 2 threads cpu_time sums both threads (and OpenMP spin-waiting), so the rate to quote
there is FLOP / real_time; bench/report.py does that.
"""

import argparse
import ctypes
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

SDPA_LENGTHS = [128, 512, 1024, 2048, 4096]
MHA_LENGTHS = [128, 512, 1024, 2048]
GEMM_N = 2048
SDPA_B, SDPA_H, SDPA_D = 1, 8, 64
MHA_E, MHA_H = 512, 8
LSTM_IN, LSTM_N, LSTM_LAYERS, LSTM_T, LSTM_B = 256, 512, 2, 64, 16


# ---- FLOP counts: the formulas of bench/bench_attention.cpp ----------------------------

def gemm_flops(n):
    return 2.0 * n * n * n  # 2·m·n·k


def sdpa_flops(L):
    # 4·B·H·L·S·d with S = L: Q K^T and P V, 2·L·S·d each per head; softmax not counted.
    return 4.0 * SDPA_B * SDPA_H * L * L * SDPA_D


def mha_flops(L):
    # Projections 2·L·E·3E + 2·L·E·E, attention 4·L·S·E with S = L (B = 1).
    E = MHA_E
    return 2.0 * L * E * 3 * E + 2.0 * L * E * E + 4.0 * L * L * E


def lstm_flops():
    # Per layer k: 2·T·B·4N·(in_k + N), the input projection of all steps and one recurrent
    # product per step; in_0 = input size, in_k = N above. Gates and biases not counted.
    return sum(2.0 * LSTM_T * LSTM_B * 4 * LSTM_N * ((LSTM_IN if k == 0 else LSTM_N) + LSTM_N)
               for k in range(LSTM_LAYERS))


# ---- the child: one thread count -------------------------------------------------------

def openblas_info():
    """(threads, config) of the OpenBLAS that this process loaded, or (None, None)."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "openblas" in line and "/" in line}
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_config.restype = ctypes.c_char_p
            return int(lib.openblas_get_num_threads()), lib.openblas_get_config().decode()
        except (OSError, AttributeError):
            continue
    return None, None


def time_batch(fn, iters):
    """Runs fn() iters times; returns (wall seconds, process CPU seconds)."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    return time.perf_counter() - w0, time.process_time() - c0


def measure(fn, min_time, repetitions):
    """Google Benchmark-like: find a batch size reaching min_time, then repeat it."""
    fn()  # warm-up: allocator, OpenMP pool, first-touch pages
    iters = 1
    while True:
        wall, _ = time_batch(fn, iters)
        if wall >= min_time or iters >= 1_000_000:
            break
        # Aim 40% past min_time, at most 10x per step (benchmark_runner's rule).
        grow = 10.0 if wall <= 0 else min(10.0, max(1.4 * min_time / wall, 2.0))
        iters = max(iters + 1, int(math.ceil(iters * grow)))
    runs = [time_batch(fn, iters) for _ in range(repetitions)]
    return iters, [(w / iters, c / iters) for w, c in runs]


def aggregates(name, counterpart, flop, threads, iters, runs):
    """Google Benchmark's aggregate entries (ms) for one benchmark."""
    real = [w * 1e3 for w, _ in runs]
    cpu = [c * 1e3 for _, c in runs]
    flops = [flop / c if c > 0 else 0.0 for _, c in runs]
    out = []
    stats = [("mean", statistics.mean), ("median", statistics.median),
             ("stddev", lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)]
    for agg, f in stats:
        out.append(dict(name=f"{name}_{agg}", run_name=name, run_type="aggregate",
                        repetitions=len(runs), threads=1, aggregate_name=agg,
                        aggregate_unit="time", iterations=iters, real_time=f(real),
                        cpu_time=f(cpu), time_unit="ms", FLOPS=f(flops),
                        torch_threads=threads, attend_counterpart=counterpart))
    mean_real, mean_cpu, mean_flops = (statistics.mean(x) for x in (real, cpu, flops))
    sd = out[-1]
    out.append(dict(name=f"{name}_cv", run_name=name, run_type="aggregate",
                    repetitions=len(runs), threads=1, aggregate_name="cv",
                    aggregate_unit="percentage", iterations=iters,
                    real_time=sd["real_time"] / mean_real if mean_real else 0.0,
                    cpu_time=sd["cpu_time"] / mean_cpu if mean_cpu else 0.0,
                    time_unit="ms", FLOPS=sd["FLOPS"] / mean_flops if mean_flops else 0.0,
                    torch_threads=threads, attend_counterpart=counterpart))
    return out


def uses_native_mha(mha, x):
    """Whether this call takes torch's fused _native_multi_head_attention kernel."""
    with torch.autograd.profiler.profile() as prof:
        mha(x, x, x, need_weights=False)
    return any("_native_multi_head_attention" in e.name for e in prof.function_events)


def lstm_ops(lstm, x):
    """How nn.LSTM ran: the calls of its matrix-product and fused-RNN ops in one forward."""
    with torch.autograd.profiler.profile() as prof:
        lstm(x)
    counts = {}
    for e in prof.function_events:
        if e.name in ("aten::addmm", "aten::mm", "aten::matmul") or "rnn" in e.name:
            counts[e.name] = counts.get(e.name, 0) + 1
    return ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())) or "none recorded"


def worker(threads, min_time, repetitions, filt):
    global torch
    import torch  # after OPENBLAS_NUM_THREADS is in the environment (set by the parent)

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    blas_threads, blas_config = openblas_info()
    info = dict(torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                openblas_threads=blas_threads, openblas_config=blas_config,
                env_OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS"),
                env_OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS"))
    results = []

    def run(name, counterpart, flop, fn):
        if filt and filt not in name:
            return
        iters, runs = measure(fn, min_time, repetitions)
        results.extend(aggregates(f"{name}/torch_threads:{threads}", counterpart, flop,
                                  threads, iters, runs))
        med = statistics.median(w for w, _ in runs)
        print(f"  {name:<40} threads={threads} {med * 1e3:10.3f} ms  "
              f"{flop / med / 1e9:8.2f} GFLOP/s (wall)", file=sys.stderr, flush=True)

    with torch.no_grad():
        a, b = (torch.rand(GEMM_N, GEMM_N) * 2 - 1 for _ in range(2))
        run(f"Torch_Mm/{GEMM_N}", f"BM_Sgemm/{GEMM_N}", gemm_flops(GEMM_N),
            lambda a=a, b=b: torch.mm(a, b))
        del a, b

        scale = 1.0 / math.sqrt(SDPA_D)
        for L in SDPA_LENGTHS:
            q, k, v = (torch.rand(SDPA_B, SDPA_H, L, SDPA_D) * 2 - 1 for _ in range(3))

            def sdpa(q=q, k=k, v=v):
                return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v

            run(f"Torch_MatmulSoftmaxMatmul/{L}", f"BM_SdpaReference/{L}", sdpa_flops(L), sdpa)
            del q, k, v

        for batch_first, family in ((False, "Torch_MultiheadAttention"),
                                    (True, "Torch_MultiheadAttentionFastPath")):
            mha = torch.nn.MultiheadAttention(MHA_E, MHA_H, batch_first=batch_first).eval()
            probe = torch.rand(1, 8, MHA_E) if batch_first else torch.rand(8, 1, MHA_E)
            info[f"{family}_native_kernel"] = uses_native_mha(mha, probe)
            for L in MHA_LENGTHS:
                x = torch.rand(1, L, MHA_E) if batch_first else torch.rand(L, 1, MHA_E)

                def fwd(mha=mha, x=x):
                    return mha(x, x, x, need_weights=False)

                run(f"{family}/{L}", f"BM_MultiheadAttention/{L}", mha_flops(L), fwd)

        lstm = torch.nn.LSTM(LSTM_IN, LSTM_N, num_layers=LSTM_LAYERS).eval()
        x = torch.rand(LSTM_T, LSTM_B, LSTM_IN) * 2 - 1  # [T, B, input]
        info["Torch_LSTM_ops"] = lstm_ops(lstm, x)
        run("Torch_LSTM", "BM_LSTM", lstm_flops(), lambda lstm=lstm, x=x: lstm(x))
    json.dump(dict(info=info, benchmarks=results), sys.stdout)


# ---- the parent: context, children, merged JSON -----------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON file to write (required)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per repetition")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--filter", default="", help="run only names containing this")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        worker(args.worker, args.min_time, args.repetitions, args.filter)
        return
    if not args.out:
        p.error("--out is required")

    with open("/proc/loadavg") as f:
        load = [float(x) for x in f.read().split()[:3]]
    context = dict(date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), host_name=platform.node(),
                   executable=f"{sys.executable} {os.path.abspath(__file__)}",
                   num_cpus=os.cpu_count(), cpu_model=cpu_model(), load_avg=load,
                   python_version=platform.python_version(), min_time=args.min_time,
                   repetitions=args.repetitions, runs={})
    benchmarks = []
    for n in args.threads:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(n), OMP_NUM_THREADS=str(n),
                   MKL_NUM_THREADS=str(n))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n),
               "--min-time", str(args.min_time), "--repetitions", str(args.repetitions),
               "--filter", args.filter]
        print(f"torch_bench: {n} thread(s)", file=sys.stderr, flush=True)
        child = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True)
        part = json.loads(child.stdout)
        if part["info"]["openblas_threads"] not in (None, n) or part["info"]["torch_threads"] != n:
            sys.exit(f"torch_bench: asked for {n} threads, child saw {part['info']}")
        context["runs"][f"torch_threads:{n}"] = part["info"]
        benchmarks.extend(part["benchmarks"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(context=context, benchmarks=benchmarks), f, indent=2)
        f.write("\n")
    print(f"torch_bench: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
