"""The benchmark's functions at a tiny size (keys and types, not timings), and the streaming read
path of the teacher cache that its scale test relies on."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble_kd.cache import CACHE_VERSION, ensure_cache, open_cache, write_cache
from ensemble_kd.io import FormatError
from ensemble_kd.models import build_model
from ensemble_kd.predict import predict_logits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = module
    spec.loader.exec_module(module)
    return module


def _is_pos(v) -> bool:
    return isinstance(v, float) and v > 0


def test_distill_and_loader(bench):
    d = bench.bench_distill(n=300, n_teachers=2, repeats=1, teacher_widths=(8,),
                            student_widths=(4,))
    for key in ("distill_cached_over_plain", "distill_online_over_plain"):
        assert _is_pos(d[key])
    detail = d["distill_detail"]
    assert detail["examples"] == 300 and detail["teachers"] == 2
    assert set(detail["epochs"]) == {"plain", "cached", "online"}
    assert all(len(v["wall_all_s"]) == 1 for v in detail["epochs"].values())
    l_ = bench.bench_loader(n=300, repeats=1)
    assert _is_pos(l_["loader_speedup"])
    assert set(l_["loader_detail"]["examples_per_s"]) == {"tensor_batches", "dataloader"}


def test_views(bench):
    v = bench.bench_views(n=300, n_teachers=2, repeats=1, n_views=2, teacher_widths=(8,),
                          student_widths=(4,))
    for key in ("views_cached_over_plain", "views_online_over_cached"):
        assert _is_pos(v[key])
    detail = v["views_detail"]
    assert detail["cache_rows"] == 600 and detail["views"]["mixup"] > 0
    assert set(detail["epochs"]) == {"plain", "views_cached", "views_online"}
    assert bench.TARGETS["views_cached_over_plain"] == ("<=", 1.5)


def test_denormals(bench):
    from ensemble_kd.train import flushing_denormals

    before = flushing_denormals()
    d = bench.bench_denormals(steps=1, repeats=1)
    assert _is_pos(d["denormal_flush_speedup"])
    assert set(d["denormal_steps_s"]) == {"off", "on"}
    assert 0.1 < d["denormal_subnormal_share"] < 0.9  # the frame and the dead units' moments
    assert flushing_denormals() == before  # the "on" variant restored the mode


def test_combine(bench):
    c = bench.bench_combine(n_ours=40, n_paper=3, repeats=1, gd_steps=10, n_classes=12,
                            n_specialists=3, size=3)
    assert _is_pos(c["combine_speedup"])
    assert isinstance(c["combine_objective_gap"], float)
    # ten Adam steps are far from the optimum: the exact solver must do better
    assert c["combine_objective_gap"] < 0
    assert c["combine_detail"]["examples_paper"] == 3


def test_ensemble(bench):
    e = bench.bench_ensemble(n=128, n_teachers=2, repeats=1, widths=(8,), small_widths=(4,))
    assert _is_pos(e["ensemble_vectorized_speedup_cpu"])
    if torch.cuda.is_available():
        assert _is_pos(e["ensemble_vectorized_speedup_cuda"])
    else:
        assert e["ensemble_vectorized_speedup_cuda"] is None
    cpu = e["ensemble_detail"]["cpu"]
    assert set(cpu) == {"mlp_256_256", "mlp_small"}
    assert cpu["mlp_256_256"]["teachers"] == 2
    assert _is_pos(e["ensemble_vectorized_speedup_cpu_small"])


def test_cache_scale_runs_in_a_fresh_process(bench, tmp_path):
    r = bench.bench_cache_scale(n=2000, n_classes=30, n_teachers=2, dim=4, batch_size=128,
                                folder=str(tmp_path), compare_mmap=False, threads=1)
    assert _is_pos(r["cache_peak_rss_gib"]) and r["cache_peak_rss_gib"] < 2
    assert r["cache_disk_gib"] == pytest.approx(2000 * 30 * 2 * 2 / 2**30, rel=0.01)
    assert _is_pos(r["cache_write_s"])
    streamed = r["cache_detail"]["streamed"]
    assert streamed["mode"] == "distill" and streamed["streaming"] is False  # small: mapped
    assert r["cache_detail"]["memory_mapped"] is None
    assert list(tmp_path.iterdir()) == []  # the temporary cache is gone


def test_subsets_at_scale_runs_in_a_fresh_process(bench):
    r = bench.bench_subsets(groups=4, size=10)
    assert _is_pos(r["subsets_15k_seconds"]) and _is_pos(r["subsets_15k_peak_gib"])
    assert r["subsets_15k_ari"] >= 0.95
    detail = r["subsets_15k_detail"]
    assert detail["classes"] == 40 and detail["subsets"] == 4
    assert bench.TARGETS["subsets_15k_seconds"] == ("<", 60.0)
    assert "subsets" in bench.STEPS
    # the report of the same matrix: sparse (it came sparse), its 4 clusters the planted groups
    assert _is_pos(r["report_15k_seconds"]) and _is_pos(r["report_15k_peak_gib"])
    assert r["report_15k_ari"] == 1.0
    report = r["report_15k_detail"]
    assert report["sparse"] is True
    assert {"report.json", "report.md", "report.html", "confusion_counts.png"} <= set(
        report["files_bytes"])  # 40 classes: few enough for a heatmap


def test_table_and_cli(bench, tmp_path):
    text = bench.table({"distill_cached_over_plain": 1.3, "loader_speedup": 40.0,
                        "ensemble_vectorized_speedup_cuda": None, "cache_peak_rss_gib": 0.5})
    assert "MISSED" in text and text.count(" met") == 2 and "n/a" in text
    with pytest.raises(SystemExit):
        bench.main(["--quick"])  # --out is required
    assert bench.main(["--out", str(tmp_path / "b.json"), "--only", "loader", "--quick"]) == 0
    out = json.loads((tmp_path / "b.json").read_text())
    assert _is_pos(out["loader_speedup"]) and out["quick"] is True and out["threads"] == 1
    assert isinstance(out["machine"], str) and out["cache_scale_examples"] == 100_000


# ------------------------------------------------------------------ the cache's streaming read path

N, DIM, C = 50, 5, 7


def _teachers(k: int = 3):
    torch.manual_seed(0)
    return [build_model("mlp", (DIM,), C, widths=[8]) for _ in range(k)]


def _x() -> torch.Tensor:
    return torch.randn(N, DIM, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("topk", [0, 2])
def test_streaming_reads_equal_mapped_reads(tmp_path, topk):
    teachers, x = _teachers(), _x()
    mapped = ensure_cache(teachers, x, tmp_path / "c", topk=topk)
    streamed = open_cache(tmp_path / "c", max_mapped_bytes=0)
    assert streamed.streaming and not mapped.streaming
    for idx in ([3, 0, 49, 3, 17], list(range(10, 20)), [5], [], np.arange(N)[::-1].copy()):
        a, b = mapped.batch(idx), streamed.batch(torch.tensor(idx, dtype=torch.long))
        assert b.shape == (3, len(idx), C) and b.dtype == torch.float32
        assert torch.equal(a, b)
    assert torch.equal(streamed.all(), mapped.all())
    if not topk:
        direct = torch.stack([predict_logits(t, x) for t in teachers])  # (K, N, C)
        assert torch.equal(streamed.all(), direct)
    streamed.close()


def test_layout_version_and_bounds(tmp_path):
    cache = ensure_cache(_teachers(), _x(), tmp_path / "c", dtype="float16")
    arr = np.load(tmp_path / "c" / "logits.npy", mmap_mode="r")
    assert arr.shape == (N, 3, C) and arr.dtype == np.float16  # example-major on disk
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["version"] == CACHE_VERSION and meta["shape"] == [3, N, C]
    for c_ in (cache, open_cache(tmp_path / "c", max_mapped_bytes=0)):
        with pytest.raises(IndexError, match="position 50"):
            c_.batch([0, 50])
        with pytest.raises(IndexError, match="position -1"):
            c_.batch([-1])
    # a cache of another format version is not read; ensure_cache rebuilds it
    meta["version"] = 1
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="version"):
        open_cache(tmp_path / "c")
    again = ensure_cache(_teachers(), _x(), tmp_path / "c", dtype="float16")
    assert again.meta["version"] == CACHE_VERSION


def test_streaming_read_of_a_file_truncated_after_opening(tmp_path):
    ensure_cache(_teachers(), _x(), tmp_path / "c")
    cache = open_cache(tmp_path / "c", max_mapped_bytes=0)
    path = tmp_path / "c" / "logits.npy"
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(FormatError, match="truncated"):
        cache.batch([N - 1])


def test_non_finite_and_float16_overflow_are_refused(tmp_path):
    x = _x()
    x[7, 2] = float("nan")
    with pytest.raises(ValueError, match="teacher 0 .*non-finite.*example 7"):
        write_cache(_teachers(2), x, tmp_path / "a")
    assert not (tmp_path / "a" / "meta.json").exists()
    big = build_model("mlp", (DIM,), C, widths=[])
    with torch.no_grad():
        big.head.weight.fill_(3e4)
    teachers = [*_teachers(1), big]
    with pytest.raises(ValueError, match="teacher 1 .*float16"):
        write_cache(teachers, _x(), tmp_path / "b", dtype="float16")
    ok = write_cache(teachers, _x(), tmp_path / "b", dtype="float32")  # float32 holds them
    assert float(ok.all().abs().max()) > 65504


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_streaming_keeps_resident_memory_at_a_batch(tmp_path):
    # 8,000 x 2 teachers x 1,000 classes in float16: 32 MB on disk
    n, c = 8000, 1000
    teachers = [build_model("mlp", (4,), c, widths=[]) for _ in range(2)]
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    size = write_cache(teachers, x, tmp_path / "c", dtype="float16").disk_bytes()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))

    def growth(cache) -> int:
        before = _rss_bytes()
        for i in range(0, n, 256):
            cache.batch(order[i : i + 256])
        return _rss_bytes() - before

    streamed = open_cache(tmp_path / "c", max_mapped_bytes=0)
    mapped = open_cache(tmp_path / "c")
    assert growth(streamed) < 0.25 * size
    assert growth(mapped) > 0.5 * size  # what the streaming path avoids
