"""Benchmarks of ensemble-kd: five ratios, each measured side by side in one run (issue 5).

    python scripts/benchmark.py [--quick] --out FILE.json [--threads N] [--only NAME ...]

1. distillation overhead: an epoch distilling from 10 teachers (cached; online) over an epoch of
   plain hard-label training of the same student (target: cached <= 1.15x);
2. input pipeline: in-memory ``TensorBatches`` against ``DataLoader(TensorDataset)`` (>= 10x);
3. specialist combination: ``combine_predictions`` against the paper's per-example gradient descent
   (``combine_gradient_descent``): examples per second and the objective gap (>= 100x, gap <= 0);
4. ensemble training: N teachers one after another against all at once, vectorised (CPU; CUDA when
   a GPU is present);
5. cache at scale: 1,000,000 examples x 1,000 classes x 4 teachers, float16 (100,000 with
   ``--quick``): disk size, write time and the peak resident memory of one distillation epoch
   streaming from it, measured in a fresh process (target < 2 GiB);
6. (full run, or ``--only topk``) what a top-k cache costs in test accuracy on Fashion-MNIST;
7. augmented views: an epoch distilling from the view cache of 10 teachers (shifts and mixup
   regenerated from their keys every step) over a plain hard-label epoch on un-augmented data
   (target <= 1.5x), and online teachers on the same views over the cached ones;
8. subsets at the paper's scale (``--only subsets``): ``choose_subsets`` on a sparse synthetic
   confusion matrix of 50 planted groups of 300 classes (15,000 classes), in a fresh process:
   seconds (target < 60), peak resident memory (target < 4 GiB) and the adjusted Rand index of
   the subsets against the planted groups (target >= 0.95).

Every timing is repeated, the variants interleaved, and the median taken; each result keeps its
medians, wall and CPU seconds, so a reader can tell a loaded machine from a slow code path.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ensemble_kd.batching import TensorBatches, ViewBatches  # noqa: E402
from ensemble_kd.cache import ensure_cache, open_cache, write_cache  # noqa: E402
from ensemble_kd.data import TransferSet, load_dataset  # noqa: E402
from ensemble_kd.distill import (  # noqa: E402
    DistillConfig,
    cached_objective,
    distill,
    online_objective,
)
from ensemble_kd.io import atomic_write_json  # noqa: E402
from ensemble_kd.machine import describe_machine  # noqa: E402
from ensemble_kd.models import build_model  # noqa: E402
from ensemble_kd.train import TrainConfig, flush_denormals, train  # noqa: E402
from ensemble_kd.vectorized import train_vectorized  # noqa: E402
from ensemble_kd.views import ViewConfig  # noqa: E402
from specialists.combine import (  # noqa: E402
    active_specialists,
    combination_objective,
    combine_gradient_descent,
    combine_predictions,
)

GIB = 2**30
STEPS = ("distill", "views", "loader", "combine", "ensemble", "cache", "topk", "subsets",
         "denormals")
TARGETS = {  # key: (comparison, bound)
    "distill_cached_over_plain": ("<=", 1.15),
    "views_cached_over_plain": ("<=", 1.5),
    "loader_speedup": (">=", 10.0),
    "combine_speedup": (">=", 100.0),
    "combine_objective_gap": ("<=", 0.0),
    "cache_peak_rss_gib": ("<", 2.0),
    "subsets_15k_seconds": ("<", 60.0),
    "subsets_15k_peak_gib": ("<", 4.0),
    "subsets_15k_ari": (">=", 0.95),
    "report_15k_peak_gib": ("<", 4.0),  # ours, the subsets' memory budget: the report holds no
    "report_15k_ari": (">=", 0.95),     # (C, C) array and clusters like choose_subsets
}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Run the variants in turn ``repeats`` times after one untimed warm-up call each; median wall
    and CPU seconds of each."""
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # lazy initialisation, allocator and cache warm-up
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            w, c = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    return {k: {"wall_s": statistics.median(wall[k]), "cpu_s": statistics.median(cpu[k]),
                "wall_all_s": [round(v, 4) for v in wall[k]]} for k in variants}


# ----------------------------------------------------------------------------- 1. distillation


def fashion_like(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Fashion-MNIST's training split when its files are there, else random data of its shape."""
    try:
        s = load_dataset("fashion-mnist")
        x, y, source = s.x_train, s.y_train, "fashion-mnist"
    except (FileNotFoundError, OSError, ValueError):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(54_000, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (54_000,), generator=g)
        source = "synthetic (fashion-mnist shape: 54,000 x 1 x 28 x 28, 10 classes)"
    if n is not None:
        x, y = x[:n], y[:n]
    return x, y, source


def _mlp(seed: int, input_shape, n_classes: int, widths, dropout: float = 0.0):
    torch.manual_seed(seed)
    return build_model("mlp", input_shape, n_classes, widths=list(widths), dropout=dropout)


def _student_epoch(batches, cfg: TrainConfig, shape, c: int, widths, objective=None
                   ) -> Callable[[], object]:
    """One epoch of a fresh student (the same initial weights every call) on ``batches``."""
    def run():
        student = _mlp(0, shape, c, widths)
        kw = {} if objective is None else {"objective": objective}
        train(student, batches, cfg, progress=False, **kw)
    return run


def bench_distill(*, n: int | None = None, n_teachers: int = 10, repeats: int = 3,
                  teacher_widths=(256, 256), student_widths=(64,), batch_size: int = 128) -> dict:
    """Epoch time of distilling (cached, online) over plain training of the same student.

    The teachers are untrained MLPs 784-256-256-10 with dropout 0.2 (a teacher's cost does not
    depend on its weights); the student is an MLP 784-64-10.
    """
    x, y, source = fashion_like(n)
    shape, c = tuple(x.shape[1:]), 10
    teachers = [_mlp(100 + k, shape, c, teacher_widths, 0.2) for k in range(n_teachers)]
    dcfg = DistillConfig()
    cfg = TrainConfig(epochs=1, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as folder:
        t0 = time.perf_counter()
        cache = ensure_cache(teachers, x, folder, dtype=dcfg.cache_dtype)
        build_s = time.perf_counter() - t0

        batches = TensorBatches(x, y, batch_size=batch_size)  # built once, as a run does

        def epoch(objective=None) -> Callable[[], object]:
            return _student_epoch(batches, cfg, shape, c, student_widths, objective)

        res = interleaved({
            "plain": epoch(),
            "cached": epoch(cached_objective(cache, dcfg)),
            "online": epoch(online_objective(teachers, dcfg)),
        }, repeats)
        cache.close()
    plain = res["plain"]
    return {
        "distill_cached_over_plain": res["cached"]["wall_s"] / plain["wall_s"],
        "distill_online_over_plain": res["online"]["wall_s"] / plain["wall_s"],
        "distill_cached_over_plain_cpu": res["cached"]["cpu_s"] / plain["cpu_s"],
        "distill_online_over_plain_cpu": res["online"]["cpu_s"] / plain["cpu_s"],
        "distill_detail": {
            "data": source, "examples": len(x), "teachers": n_teachers,
            "teacher": f"mlp {list(teacher_widths)}, dropout 0.2",
            "student": f"mlp {list(student_widths)}", "batch_size": batch_size,
            "cache_build_s": build_s, "epochs": res,
        },
    }


def bench_views(*, n: int | None = None, n_teachers: int = 10, repeats: int = 3, n_views: int = 4,
                teacher_widths=(256, 256), student_widths=(64,), batch_size: int = 128) -> dict:
    """Epoch time of distilling on augmented views (view cache; online) over plain training.

    The set-up of :func:`bench_distill`; the views shift by up to 1 pixel and mix up with
    Beta(0.2, 0.2) weights, ``n_views`` per example in the cache, regenerated at every step. The
    plain epoch trains the same student on hard labels of the un-augmented data.
    """
    x, y, source = fashion_like(n)
    shape, c = tuple(x.shape[1:]), 10
    teachers = [_mlp(100 + k, shape, c, teacher_widths, 0.2) for k in range(n_teachers)]
    views = ViewConfig(shift=1, mixup=0.2, views=n_views, seed=0)
    dcfg = DistillConfig(views=views)
    cfg = TrainConfig(epochs=1, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-views-") as folder:
        t0 = time.perf_counter()
        cache = ensure_cache(teachers, x, folder, dtype=dcfg.cache_dtype, views=views)
        build_s = time.perf_counter() - t0
        plain_batches = TensorBatches(x, y, batch_size=batch_size)
        view_batches = ViewBatches(x, y, views=views, batch_size=batch_size)

        def epoch(batches, objective=None) -> Callable[[], object]:
            return _student_epoch(batches, cfg, shape, c, student_widths, objective)

        res = interleaved({
            "plain": epoch(plain_batches),
            "views_cached": epoch(view_batches, cached_objective(cache, dcfg)),
            "views_online": epoch(view_batches, online_objective(teachers, dcfg)),
        }, repeats)
        cache.close()
    plain, cached, online = res["plain"], res["views_cached"], res["views_online"]
    return {
        "views_cached_over_plain": cached["wall_s"] / plain["wall_s"],
        "views_online_over_cached": online["wall_s"] / cached["wall_s"],
        "views_cached_over_plain_cpu": cached["cpu_s"] / plain["cpu_s"],
        "views_online_over_cached_cpu": online["cpu_s"] / cached["cpu_s"],
        "views_detail": {
            "data": source, "examples": len(x), "teachers": n_teachers,
            "teacher": f"mlp {list(teacher_widths)}, dropout 0.2",
            "student": f"mlp {list(student_widths)}", "batch_size": batch_size,
            "views": views.as_dict(), "cache_rows": n_views * len(x), "cache_build_s": build_s,
            "epochs": res,
        },
    }


# ----------------------------------------------------------------------------- 2. input pipeline


def bench_loader(*, n: int | None = None, repeats: int = 3, batch_size: int = 128) -> dict:
    """One shuffled epoch of batches: TensorBatches against DataLoader(TensorDataset)."""
    x, y, source = fashion_like(n)
    # both built once, outside the timings: an epoch is what is compared
    ours_src = TensorBatches(x, y, batch_size=batch_size)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )

    def ours():
        for _ in ours_src.epoch(torch.Generator().manual_seed(0)):
            pass

    def dataloader():
        for _ in loader:
            pass

    res = interleaved({"tensor_batches": ours, "dataloader": dataloader}, repeats)
    return {
        "loader_speedup": res["dataloader"]["wall_s"] / res["tensor_batches"]["wall_s"],
        "loader_detail": {
            "data": source, "examples": len(x), "batch_size": batch_size,
            "examples_per_s": {k: len(x) / v["wall_s"] for k, v in res.items()}, "epochs": res,
        },
    }


# ----------------------------------------------------------------------------- 3. combination


def combine_problem(n: int, n_classes: int = 100, n_specialists: int = 10, size: int = 10,
                    seed: int = 0):
    """Random generalist and specialist distributions over disjoint subsets (paper-like shape)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_classes, generator=g)
    subsets = [sorted(perm[m * size : (m + 1) * size].tolist()) for m in range(n_specialists)]
    p_g = torch.softmax(2.0 * torch.randn(n, n_classes, generator=g), -1)  # (B, C)
    p_ms = [torch.softmax(2.0 * torch.randn(n, size + 1, generator=g), -1) for _ in subsets]
    return p_g, p_ms, subsets


def bench_combine(*, n_ours: int = 2000, n_paper: int = 20, top_n: int = 3, repeats: int = 3,
                  gd_steps: int = 300, n_classes: int = 100, n_specialists: int = 10,
                  size: int = 10) -> dict:
    """Our batched exact solver against the paper's per-example gradient descent, same inputs.

    Ours solves all ``n_ours`` examples in one call; the paper's method, one example at a time, is
    timed on the first ``n_paper`` of them (its cost per example does not depend on the count). The
    gap is taken on those common examples.
    """
    p_g, p_ms, subsets = combine_problem(n_ours, n_classes, n_specialists, size)
    head = (p_g[:n_paper], [p[:n_paper] for p in p_ms])
    out = {}

    def ours():
        out["ours"] = combine_predictions(p_g, p_ms, subsets, top_n=top_n)

    def paper():
        out["paper"] = combine_gradient_descent(*head, subsets, top_n=top_n, steps=gd_steps)

    res = interleaved({"ours": ours, "paper": paper}, repeats)
    act = active_specialists(head[0], subsets, top_n)
    f_ours = combination_objective(out["ours"][:n_paper], *head, subsets, act)
    f_paper = combination_objective(out["paper"], *head, subsets, act)
    rate_ours = n_ours / res["ours"]["wall_s"]
    rate_paper = n_paper / res["paper"]["wall_s"]
    return {
        "combine_speedup": rate_ours / rate_paper,
        "combine_objective_gap": float((f_ours - f_paper).mean()),
        "combine_detail": {
            "classes": n_classes, "specialists": n_specialists, "subset_size": size,
            "top_n": top_n, "mean_active": float(act.sum(1).float().mean()),
            "examples_ours": n_ours, "examples_paper": n_paper, "paper_adam_steps": gd_steps,
            "examples_per_s": {"ours": rate_ours, "paper": rate_paper},
            "objective_mean": {"ours": float(f_ours.mean()), "paper": float(f_paper.mean())},
            "gap_max": float((f_ours - f_paper).max()), "timings": res,
        },
    }


# ----------------------------------------------------------------------------- 4. ensembles


def _ensemble_speedup(x, y, *, n_teachers: int, widths, dropout: float, repeats: int,
                      device: str, batch_size: int = 128) -> dict:
    shape, c = tuple(x.shape[1:]), int(y.max()) + 1
    x, y = x.to(device), y.to(device)
    cfgs = [TrainConfig(epochs=1, batch_size=batch_size, seed=k) for k in range(n_teachers)]

    def models():
        return [_mlp(k, shape, c, widths, dropout) for k in range(n_teachers)]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    src = TensorBatches(x, y, batch_size=batch_size)  # stateless: every member may share it

    def sequential():
        for m, cfg in zip(models(), cfgs, strict=True):
            train(m, src, cfg, device=device, progress=False)
        sync()

    def vectorised():
        train_vectorized(models(), [src] * n_teachers, cfgs, device=device, progress=False)
        sync()

    res = interleaved({"sequential": sequential, "vectorized": vectorised}, repeats)
    return {
        "speedup": res["sequential"]["wall_s"] / res["vectorized"]["wall_s"],
        "teachers": n_teachers, "mlp_widths": list(widths), "dropout": dropout,
        "examples": len(x), "input_shape": list(shape), "timings": res,
    }


def bench_ensemble(*, n: int | None = 10_000, n_teachers: int = 10, repeats: int = 3,
                   widths=(256, 256), small_widths=(64,)) -> dict:
    """N teachers, one epoch each: sequential against vectorised, CPU and (if present) CUDA.

    The headline figure uses an MLP 256-256 teacher (dropout 0.2) on Fashion-MNIST-shaped data; a
    small MLP on 8x8 inputs (digits-sized, ``*_small``) shows where the per-step overhead that
    vectorisation removes dominates.
    """
    x, y, source = fashion_like(n)
    g = torch.Generator().manual_seed(1)
    xs = torch.rand(len(x), 1, 8, 8, generator=g)  # digits-sized inputs, same labels
    out: dict = {"ensemble_detail": {"data": source}}
    for device in ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]:
        say(f"  ensemble on {device}: MLP 256-256 teachers")
        big = _ensemble_speedup(x, y, n_teachers=n_teachers, widths=widths, dropout=0.2,
                                repeats=repeats, device=device)
        say(f"  ensemble on {device}: small MLP teachers")
        small = _ensemble_speedup(xs, y, n_teachers=n_teachers, widths=small_widths, dropout=0.0,
                                  repeats=repeats, device=device)
        out[f"ensemble_vectorized_speedup_{device}"] = big["speedup"]
        out[f"ensemble_vectorized_speedup_{device}_small"] = small["speedup"]
        out["ensemble_detail"][device] = {"mlp_256_256": big, "mlp_small": small}
    out.setdefault("ensemble_vectorized_speedup_cuda", None)
    out.setdefault("ensemble_vectorized_speedup_cuda_small", None)
    return out


# ----------------------------------------------------------------------------- 5. cache at scale


def scale_inputs(n: int, dim: int, n_classes: int, n_teachers: int):
    """Transfer inputs (n, dim) and cheap 'teachers' (one random linear layer each), seeded."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(7))
    teachers = [_mlp(1000 + k, (dim,), n_classes, ()) for k in range(n_teachers)]
    return x, teachers


def _rss_gib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def cache_epoch_child(spec: dict) -> dict:
    """Run in a fresh process: one distillation epoch streaming from the cache in spec["folder"].

    ``spec["mode"]``: "distill" goes through :func:`ensemble_kd.distill.distill` (finds the cache
    by fingerprint, reads it as it would in a real run); "mmap" forces the memory-mapped read path
    (for comparison).
    """
    torch.set_num_threads(spec["threads"])
    x, teachers = scale_inputs(spec["n"], spec["dim"], spec["classes"], spec["teachers"])
    base = _rss_gib()  # the interpreter, torch and the transfer inputs
    student = _mlp(1, (spec["dim"],), spec["classes"], (64,))
    cfg = TrainConfig(epochs=1, batch_size=spec["batch_size"])
    dcfg = DistillConfig(cache_dtype="float16")
    if spec["mode"] == "distill":
        cache = open_cache(spec["folder"])
        streaming = cache.streaming
        fp = cache.fingerprint
        cache.close()
        transfer = TransferSet(x=x, y=None, indices=torch.arange(len(x)))
        result = distill(student, teachers, transfer, cfg, dcfg, cache_dir=spec["folder"],
                         progress=False)
        if open_cache(spec["folder"]).fingerprint != fp:
            raise RuntimeError("distill rebuilt the cache: the measurement is void")
    else:
        cache = open_cache(spec["folder"], max_mapped_bytes=2**62)
        streaming = cache.streaming
        result = train(student, TensorBatches(x, None, batch_size=spec["batch_size"]), cfg,
                       objective=cached_objective(cache, dcfg), progress=False)
    # VmHWM, the high-water mark of this process's memory since exec. Not ru_maxrss: Linux carries
    # the parent's high-water mark across a vfork + exec into it (Python spawns with vfork).
    peak = _rss_gib("VmHWM")
    return {"peak_rss_gib": peak, "baseline_rss_gib": base, "streaming": streaming,
            "epoch_s": result.history[0]["seconds"], "mode": spec["mode"]}


def _run_child(spec: dict, flag: str = "--cache-epoch-child") -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), flag, json.dumps(spec)],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {flag} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_cache_scale(*, n: int = 1_000_000, n_classes: int = 1000, n_teachers: int = 4,
                      dim: int = 16, batch_size: int = 256, folder: str | None = None,
                      compare_mmap: bool = True, threads: int | None = None) -> dict:
    """Write a float16 cache of n x n_classes x n_teachers; stream one distillation epoch from it.

    The cache goes to a temporary folder (under ``folder`` when given) that is deleted afterwards.
    """
    need = n * n_classes * n_teachers * 2
    parent = folder or tempfile.gettempdir()
    free = shutil.disk_usage(parent).free
    if free < 1.2 * need:
        raise RuntimeError(f"the cache needs {need / GIB:.1f} GiB but {parent} has "
                           f"{free / GIB:.1f} GiB free")
    x, teachers = scale_inputs(n, dim, n_classes, n_teachers)
    tmp = tempfile.mkdtemp(prefix="bench-scale-", dir=folder)
    try:
        say(f"  writing {need / GIB:.2f} GiB of teacher logits to {tmp}")
        t0 = time.perf_counter()
        cache = write_cache(teachers, x, tmp, dtype="float16")
        write_s = time.perf_counter() - t0
        disk = cache.disk_bytes()
        cache.close()
        del x, teachers
        spec = {"folder": tmp, "n": n, "dim": dim, "classes": n_classes, "teachers": n_teachers,
                "batch_size": batch_size, "threads": threads or torch.get_num_threads(),
                "mode": "distill"}
        say("  one distillation epoch streaming from the cache (fresh process)")
        streamed = _run_child(spec)
        mapped = None
        if compare_mmap:
            say("  the same epoch through a memory map (fresh process, for comparison)")
            mapped = _run_child({**spec, "mode": "mmap"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "cache_peak_rss_gib": streamed["peak_rss_gib"],
        "cache_disk_gib": disk / GIB,
        "cache_write_s": write_s,
        "cache_detail": {
            "examples": n, "classes": n_classes, "teachers": n_teachers, "dtype": "float16",
            "input_dim": dim, "teachers_are": "random linear layers (the build is I/O bound)",
            "batch_size": batch_size, "write_gib_per_s": disk / GIB / write_s,
            "streamed": streamed, "memory_mapped": mapped,
        },
    }


# ----------------------------------------------------------------------------- 8. subsets at scale


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where not possible."""
    # A kernel control file, not a data file: there is nothing to write atomically, and a
    # temporary name + rename cannot exist under /proc.
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
        try:
            os.write(fd, b"5")
        finally:
            os.close(fd)
        return True
    except OSError:
        return False


def subsets_child(spec: dict) -> dict:
    """Run in a fresh process: sample the planted sparse confusion, time ``choose_subsets`` on it.

    The peak is VmHWM, reset after the matrix is sampled, so it is the resident memory of the
    process (interpreter, libraries and the input matrix included) at its highest while
    ``choose_subsets`` runs.
    """
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from specialists import choose_subsets
    from specialists.planted import planted_confusion

    t0 = time.perf_counter()
    planted = planted_confusion(spec["groups"], spec["size"], seed=spec["seed"])
    make_s = time.perf_counter() - t0
    counts, truth = planted.counts, planted.groups
    c = len(truth)
    before = _rss_gib()
    reset = _reset_peak_rss()
    w, cpu = time.perf_counter(), time.process_time()
    subsets = choose_subsets(counts, max_subset_size=spec["size"])
    seconds, cpu_s = time.perf_counter() - w, time.process_time() - cpu
    peak = _rss_gib("VmHWM")
    # A class in several subsets takes the first (most confused) one; a class in none is a
    # cluster of its own.
    labels = np.full(c, -1)
    for k in reversed(range(len(subsets))):
        labels[subsets[k]] = k
    times = np.bincount(np.concatenate([np.asarray(s) for s in subsets]), minlength=c) \
        if subsets else np.zeros(c, dtype=int)
    none = np.flatnonzero(labels < 0)
    labels[none] = len(subsets) + np.arange(len(none))
    report = _report_at_scale(counts, truth, subsets, spec["groups"])
    return {
        "report": report,
        "seconds": seconds, "cpu_s": cpu_s, "peak_rss_gib": peak, "rss_before_gib": before,
        "peak_is_of_choose_subsets": reset, "ari": float(adjusted_rand_score(truth, labels)),
        "classes": c, "subsets": len(subsets), "subset_sizes": sorted(len(s) for s in subsets),
        "classes_in_no_subset": len(none), "classes_in_several": int((times > 1).sum()),
        "nonzeros": int(counts.nnz), "errors": int(counts.sum() - counts.diagonal().sum()),
        "examples": int(counts.sum()), "sample_s": make_s,
    }


def _report_at_scale(counts, truth, subsets: list[list[int]], groups: int) -> dict:
    """The confusion report of the planted matrix (``analyse_counts`` with ``groups`` clusters,
    then ``write_confusion_report`` with the subsets) in a temporary folder: seconds, peak RSS
    (reset first), ARI of its clusters, the files it wrote and their sizes."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from specialists import analyse_counts, write_confusion_report

    reset = _reset_peak_rss()
    w = time.perf_counter()
    analysis = analyse_counts(counts, n_clusters=groups)
    analyse_s = time.perf_counter() - w
    with tempfile.TemporaryDirectory() as folder:
        write_confusion_report(analysis, folder, subsets=subsets)
        files = {f.name: f.stat().st_size for f in sorted(Path(folder).iterdir())}
    seconds = time.perf_counter() - w
    labels = np.empty(len(truth), dtype=np.int64)
    for k, members in enumerate(analysis.clusters):
        labels[members] = k
    return {"seconds": seconds, "analyse_s": analyse_s, "peak_rss_gib": _rss_gib("VmHWM"),
            "peak_is_of_report": reset, "ari": float(adjusted_rand_score(truth, labels)),
            "sparse": analysis.sparse, "files_bytes": files}


def bench_subsets(*, groups: int = 50, size: int = 300, seed: int = 0) -> dict:
    """``choose_subsets`` on the sparse planted confusion of ``groups * size`` classes."""
    say(f"  choose_subsets on {groups} x {size} planted classes (sparse, fresh process)")
    r = _run_child({"groups": groups, "size": size, "seed": seed}, "--subsets-child")
    return {
        "subsets_15k_seconds": r["seconds"],
        "subsets_15k_peak_gib": r["peak_rss_gib"],
        "subsets_15k_ari": r["ari"],
        "report_15k_seconds": r["report"]["seconds"],
        "report_15k_peak_gib": r["report"]["peak_rss_gib"],
        "report_15k_ari": r["report"]["ari"],
        "report_15k_detail": {
            "call": (f"analyse_counts(counts, n_clusters={groups}), then "
                     "write_confusion_report(analysis, folder, subsets=subsets) (the subsets of "
                     "choose_subsets above); sparse throughout, no heatmap above 60 classes"),
            **r.pop("report"),
        },
        "subsets_15k_detail": {
            "matrix": (f"specialists.planted.planted_confusion({groups}, {size}, seed={seed}): "
                       "ratio 10 per pair, median 1,000 examples and 40% errors per class"),
            "call": f"choose_subsets(counts, max_subset_size={size})",
            "peak": ("VmHWM of the child process, reset after sampling the matrix: interpreter "
                     "and input matrix included" if r["peak_is_of_choose_subsets"]
                     else "VmHWM of the whole child process (reset not available)"),
            **r,
        },
    }


# ----------------------------------------------------------------------------- top-k accuracy


def bench_topk(*, ks=(1, 3, 5), n_teachers: int = 3, teacher_epochs: int = 3,
               student_epochs: int = 5, seeds=(0, 1), n: int | None = None,
               teacher_widths=(256, 256), student_widths=(64,), temperature: float = 1.0) -> dict:
    """What a top-k cache costs: test accuracy of students distilled from dense and top-k caches.

    At T = 1 only: a top-k cache's one residual for the dropped classes is right at T = 1 alone,
    and distillation refuses it at any other temperature (``DistillConfig.validate``).

    Fashion-MNIST (skipped when its files are missing): ``n_teachers`` MLP teachers, then one
    student per cache variant and seed, distilled on the unlabelled training set (soft targets
    only, so the cache is all the student learns from) and scored on the test set.
    """
    from ensemble_kd.predict import predict_logits

    try:
        splits = load_dataset("fashion-mnist")
    except (FileNotFoundError, OSError, ValueError) as e:
        return {"topk_detail": {"skipped": f"Fashion-MNIST not available: {e}"}}
    x, y = splits.x_train[:n], splits.y_train[:n]
    xt, yt = splits.x_test, splits.y_test
    shape, c = tuple(x.shape[1:]), splits.n_classes

    def acc(model) -> float:
        return float((predict_logits(model, xt).argmax(-1) == yt).float().mean())

    teachers = []
    batches = TensorBatches(x, y, batch_size=128)
    for k in range(n_teachers):
        say(f"  top-k: teacher {k + 1}/{n_teachers}")
        m = _mlp(100 + k, shape, c, teacher_widths, 0.2)
        train(m, batches, TrainConfig(epochs=teacher_epochs, seed=k), progress=False)
        teachers.append(m.eval())
    probs = torch.stack([torch.softmax(predict_logits(t, xt), -1) for t in teachers]).mean(0)
    transfer = TransferSet(x=x, y=None, indices=torch.arange(len(x)))
    variants = {"dense_float32": ("float32", 0), "dense_float16": ("float16", 0),
                **{f"top{k}": ("float32", k) for k in ks}}
    scores: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-topk-") as tmp:
        for name, (dtype, k) in variants.items():
            say(f"  top-k: students from the {name} cache")
            for seed in seeds:
                student = _mlp(10_000 + seed, shape, c, student_widths)
                distill(student, teachers, transfer,
                        TrainConfig(epochs=student_epochs, seed=seed),
                        DistillConfig(temperature=temperature, cache_dtype=dtype, cache_topk=k),
                        cache_dir=Path(tmp) / name, progress=False)
                scores.setdefault(name, []).append(acc(student))
    means = {k: statistics.mean(v) for k, v in scores.items()}
    return {
        "topk_test_accuracy": means,
        "topk_detail": {
            "data": "fashion-mnist", "transfer": f"{len(x)} training examples, unlabelled",
            "teachers": f"{n_teachers} x mlp {list(teacher_widths)}, dropout 0.2, "
                        f"{teacher_epochs} epochs",
            "teacher_test_accuracy": [acc(t) for t in teachers],
            "ensemble_test_accuracy": float((probs.argmax(-1) == yt).float().mean()),
            "student": f"mlp {list(student_widths)}, {student_epochs} epochs, T = {temperature}",
            "seeds": list(seeds), "test_accuracy_all": scores,
        },
    }


# ----------------------------------------------------------------------------- main


def bench_denormals(*, steps: int = 20, repeats: int = 3, blank: int = 5, dead: float = 0.35,
                    seed: int = 0) -> dict:
    """Adam steps of the paper's 2x1200 MLP teacher (batch 128) in the state that slowed E1's
    teacher: weights whose gradient is zero (here: a blank ``blank``-pixel frame around every
    image and a share ``dead`` of dead first-layer units) with subnormal optimiser moments, after
    decaying by beta for hundreds of steps (a third of the moments were subnormal after 250
    epochs of that teacher). Seconds without over with the training loop's flush of subnormals
    (``ensemble_kd.train.flush_denormals``), on this thread; each call restores the same state."""
    g = torch.Generator().manual_seed(seed)
    model = _mlp(seed, (1, 28, 28), 10, (1200, 1200), dropout=0.3)
    with torch.no_grad():  # dead units: never active on these inputs
        first = model.get_submodule("body.1")
        first.bias[torch.rand(first.bias.shape, generator=g) < dead] = -1e3
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.rand(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
    x[..., :blank, :], x[..., -blank:, :], x[..., :blank], x[..., -blank:] = 0, 0, 0, 0
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # creates the moments
    tiny = torch.finfo(torch.float32).tiny  # 1.18e-38: below it, subnormal
    n_sub = n_all = 0
    for param, st in opt.state.items():
        zero = param.grad == 0  # these moments only ever decay
        for key in ("exp_avg", "exp_avg_sq"):
            m = st[key]
            m.copy_(torch.where(zero, tiny * torch.rand(m.shape, generator=g), m))
            n_sub, n_all = n_sub + int(zero.sum()), n_all + m.numel()
        st["step"].fill_(50_000.0)
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()},
             "opt": {i: {k: v.clone() for k, v in st.items()} for i, st in
                     enumerate(opt.state.values())}}

    def run(flush: bool) -> None:
        model.load_state_dict(saved["model"])
        for st, keep in zip(opt.state.values(), saved["opt"].values(), strict=True):
            for k, v in keep.items():
                st[k].copy_(v)
        with flush_denormals() if flush else contextlib.nullcontext():
            for _ in range(steps):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    t = interleaved({"off": lambda: run(False), "on": lambda: run(True)}, repeats)
    return {"denormal_flush_speedup": t["off"]["wall_s"] / t["on"]["wall_s"],
            "denormal_steps_s": {k: v["wall_s"] for k, v in t.items()},
            "denormal_subnormal_share": n_sub / n_all}


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def table(results: dict) -> str:
    rows = [
        ("distill cached / plain (epoch)", "distill_cached_over_plain"),
        ("distill online / plain (epoch)", "distill_online_over_plain"),
        ("views cached / plain (epoch)", "views_cached_over_plain"),
        ("views online / cached (epoch)", "views_online_over_cached"),
        ("TensorBatches vs DataLoader", "loader_speedup"),
        ("combine: ours vs paper (ex/s)", "combine_speedup"),
        ("combine objective gap (nats)", "combine_objective_gap"),
        ("ensemble vectorised, CPU", "ensemble_vectorized_speedup_cpu"),
        ("  small MLP (64-64-10), CPU", "ensemble_vectorized_speedup_cpu_small"),
        ("ensemble vectorised, CUDA", "ensemble_vectorized_speedup_cuda"),
        ("  small MLP (64-64-10), CUDA", "ensemble_vectorized_speedup_cuda_small"),
        ("cache epoch peak RSS (GiB)", "cache_peak_rss_gib"),
        ("cache on disk (GiB)", "cache_disk_gib"),
        ("cache write (s)", "cache_write_s"),
        ("subsets 15k classes (s)", "subsets_15k_seconds"),
        ("subsets 15k peak RSS (GiB)", "subsets_15k_peak_gib"),
        ("report 15k classes (s)", "report_15k_seconds"),
        ("report 15k peak RSS (GiB)", "report_15k_peak_gib"),
        ("report 15k clusters ARI", "report_15k_ari"),
        ("subsets 15k ARI", "subsets_15k_ari"),
        ("subnormal Adam state: off / on", "denormal_flush_speedup"),
    ]
    lines = [f"{'measurement':34s} {'value':>10s}  target", "-" * 60]
    for label, key in rows:
        if key not in results:
            continue
        target = TARGETS.get(key)
        t = ""
        if target is not None and results[key] is not None:
            op, bound = target
            ok = {"<=": results[key] <= bound, ">=": results[key] >= bound,
                  "<": results[key] < bound}[op]
            t = f"{op} {bound:g}  {'met' if ok else 'MISSED'}"
        lines.append(f"{label:34s} {_fmt(results[key]):>10s}  {t}")
    return "\n".join(lines)


def run_all(quick: bool, *, threads: int | None = None, scale_folder: str | None = None,
            only: list[str] | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    repeats = 3 if quick else 5
    n_scale = 100_000 if quick else 1_000_000
    results: dict = {
        "machine": describe_machine(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "scripts/benchmark.py", *sys.argv[1:]]),
        "quick": quick,
        "threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()),
        "repeats": repeats,
        "cache_scale_examples": n_scale,
        "cache_scale_note": ("--quick: the scale test shrinks to 100,000 examples" if quick
                             else "full size: 1,000,000 examples"),
    }
    steps = {
        # the headline ratios: a median of at least 5 interleaved repeats even with --quick
        "distill": lambda: bench_distill(repeats=max(repeats, 5)),
        "views": lambda: bench_views(repeats=max(repeats, 5)),
        "loader": lambda: bench_loader(repeats=repeats),
        "combine": lambda: bench_combine(n_paper=20 if quick else 100, repeats=repeats),
        "ensemble": lambda: bench_ensemble(n=10_000 if quick else None, repeats=repeats),
        "cache": lambda: bench_cache_scale(n=n_scale, folder=scale_folder,
                                           threads=torch.get_num_threads()),
        "topk": bench_topk,
        "subsets": bench_subsets,
        "denormals": bench_denormals,
    }
    # the top-k accuracy experiment (minutes of training) runs in the full benchmark or on request
    chosen = [k for k in steps if (k in only if only else k != "topk" or not quick)]
    for i, name in enumerate(chosen, 1):
        say(f"{i}/{len(chosen)} {name}")
        t0 = time.perf_counter()
        results.update(steps[name]())
        say(f"{i}/{len(chosen)} {name} done in {time.perf_counter() - t0:.1f} s")
    results["load_average_end"] = list(os.getloadavg())
    results["targets"] = {k: f"{op} {b:g}" for k, (op, b) in TARGETS.items()}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (< 5 min)")
    p.add_argument("--out", help="write the results to this JSON file")
    # One thread by default: the ratios are about per-step overheads, and a second intra-op thread
    # on a busy 2-core machine made small-model steps up to 20x slower and the figures erratic.
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--scale-dir", default=None,
                   help="parent folder of the scale test's temporary cache (default: the temp dir)")
    p.add_argument("--only", nargs="+", choices=STEPS, help="run only these measurements")
    p.add_argument("--cache-epoch-child", help=argparse.SUPPRESS)
    p.add_argument("--subsets-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cache_epoch_child:
        print(json.dumps(cache_epoch_child(json.loads(args.cache_epoch_child))))
        return 0
    if args.subsets_child:
        print(json.dumps(subsets_child(json.loads(args.subsets_child))))
        return 0
    if not args.out:
        p.error("--out FILE.json is required")
    results = run_all(args.quick, threads=args.threads, scale_folder=args.scale_dir,
                      only=args.only)
    print(table(results))
    atomic_write_json(args.out, results)
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
