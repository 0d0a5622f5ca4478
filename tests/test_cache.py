"""Teacher-output cache: exact values, float16, top-k mass, staleness and damaged files."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from ensemble_kd.cache import ensure_cache, open_cache, write_cache
from ensemble_kd.io import FormatError
from ensemble_kd.models import build_model
from ensemble_kd.predict import predict_logits

N, DIM, C = 37, 5, 6


def _teachers(k: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    models = [build_model("mlp", (DIM,), C, widths=[8]) for _ in range(k)]
    with torch.no_grad():  # spread the logits so the top-k really drops mass
        for m in models:
            m.head.weight.mul_(6.0)
    return models


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(N, DIM, generator=torch.Generator().manual_seed(seed))


def _direct(teachers, x) -> torch.Tensor:
    return torch.stack([predict_logits(t, x) for t in teachers])  # (K, N, C)


def test_dense_cache_equals_teacher_logits(tmp_path):
    teachers, x = _teachers(), _x()
    cache = ensure_cache(teachers, x, tmp_path / "c")
    assert cache.shape == (2, N, C) and cache.topk == 0
    assert torch.equal(cache.all(), _direct(teachers, x))
    idx = torch.tensor([5, 0, 36, 5])
    assert torch.equal(cache.batch(idx), _direct(teachers, x)[:, idx])
    assert cache.batch(idx).dtype == torch.float32
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["shape"] == [2, N, C] and meta["dtype"] == "float32" and meta["topk"] == 0


def test_convnet_teacher_cache(tmp_path):
    # batch norm holds a 0-dim buffer (num_batches_tracked): the fingerprint must hash it too
    torch.manual_seed(0)
    teacher = build_model("convnet", (1, 6, 6), C, channels=[4])
    x = torch.randn(9, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    cache = ensure_cache([teacher], x, tmp_path / "c")
    assert torch.equal(cache.all()[0], predict_logits(teacher, x))
    with torch.no_grad():
        teacher.body[1].num_batches_tracked += 1  # only the scalar buffer changes
    assert ensure_cache([teacher], x, tmp_path / "c").fingerprint != cache.fingerprint


def test_small_write_batches_give_the_same_cache(tmp_path):
    teachers, x = _teachers(), _x()
    cache = write_cache(teachers, x, tmp_path / "c", batch_size=4)  # 10 chunks, last one short
    # other chunk sizes may round the matmuls differently, hence not bit-exact
    torch.testing.assert_close(cache.all(), _direct(teachers, x), rtol=1e-6, atol=1e-6)


def test_float16_cache_is_close(tmp_path):
    teachers, x = _teachers(), _x()
    cache = ensure_cache(teachers, x, tmp_path / "c", dtype="float16")
    direct = _direct(teachers, x)
    got = cache.all()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, direct, rtol=1e-3, atol=1e-3)
    assert torch.equal(got, direct.half().float())  # exactly the float16 rounding
    assert cache.disk_bytes() < ensure_cache(teachers, x, tmp_path / "d").disk_bytes()


@pytest.mark.parametrize("k", [1, 2, 4])
def test_topk_cache_keeps_exact_top_mass_and_spreads_the_rest(tmp_path, k):
    teachers, x = _teachers(), _x()
    cache = ensure_cache(teachers, x, tmp_path / "c", topk=k)
    assert cache.topk == k
    p_true = torch.softmax(_direct(teachers, x).double(), -1)  # (K, N, C)
    p_cached = torch.softmax(cache.all().double(), -1)  # (K, N, C) at T = 1
    top_p, top_i = p_true.topk(k, dim=-1)  # (K, N, k)
    # the top-k classes keep their exact probabilities
    torch.testing.assert_close(p_cached.gather(-1, top_i), top_p, rtol=1e-5, atol=1e-7)
    # the others share exactly the remaining mass, evenly
    rest_mass = 1 - top_p.sum(-1)  # (K, N)
    others = torch.ones_like(p_true, dtype=torch.bool).scatter_(-1, top_i, False)
    p_others = p_cached[others].reshape(2, N, C - k)  # (K, N, C - k)
    torch.testing.assert_close(p_others.sum(-1), rest_mass, rtol=1e-4, atol=1e-7)
    expected = (rest_mass / (C - k))[..., None].expand_as(p_others)
    torch.testing.assert_close(p_others, expected, rtol=1e-4, atol=1e-7)
    assert float(rest_mass.max()) > 1e-3  # the test case really drops mass
    torch.testing.assert_close(p_cached.sum(-1), torch.ones(2, N, dtype=torch.float64))


def _identity_teacher():
    """A linear 'teacher' whose logits are its inputs: known logits in, known cache out."""
    model = build_model("mlp", (C,), C, widths=[])
    with torch.no_grad():
        model.head.weight.copy_(torch.eye(C))
        model.head.bias.zero_()
    return model


def test_topk_fill_logit_for_a_confident_teacher(tmp_path):
    # A trained teacher often puts all but ~1e-8 of the mass on its top class. The fill logit must
    # still be log(mean exp(dropped logits)), so that the dropped classes keep their mass relative
    # to each other and to the top class (which is what the soft targets at T > 1 are made of).
    logits = torch.tensor(
        [
            [3.0, 0.0, -1.0, 2.0, 1.0, -3.0],  # an unsure teacher
            [18.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # rest mass 5e-8 of the total
            [30.0, 0.0, -1.0, 2.0, 1.0, -3.0],  # rest mass 1e-12 of the total
        ]
    )
    cache = ensure_cache([_identity_teacher()], logits, tmp_path / "c", topk=1)
    got = cache.all()[0]  # (3, C)
    fill = torch.logsumexp(logits[:, 1:], -1) - torch.log(torch.tensor(C - 1.0))  # (3,)
    torch.testing.assert_close(got[:, 0], logits[:, 0])
    torch.testing.assert_close(got[:, 1:], fill[:, None].expand(3, C - 1), rtol=0, atol=1e-4)


def test_topk_must_be_smaller_than_the_class_count(tmp_path):
    with pytest.raises(ValueError, match="cache_topk"):
        ensure_cache(_teachers(), _x(), tmp_path / "c", topk=C)


def test_bad_dtype_and_empty_inputs(tmp_path):
    with pytest.raises(ValueError, match="float16 or float32"):
        write_cache(_teachers(), _x(), tmp_path / "c", dtype="bfloat16")
    with pytest.raises(ValueError, match="empty"):
        write_cache(_teachers(), _x()[:0], tmp_path / "c")
    with pytest.raises(ValueError, match="no teachers"):
        write_cache([], _x(), tmp_path / "c")


def test_teachers_with_different_class_counts(tmp_path):
    teachers = [*_teachers(1), build_model("mlp", (DIM,), C + 1, widths=[4])]
    with pytest.raises(ValueError, match="classes"):
        write_cache(teachers, _x(), tmp_path / "c")


def test_valid_cache_is_reused_not_recomputed(tmp_path):
    teachers, x = _teachers(), _x()
    first = ensure_cache(teachers, x, tmp_path / "c")
    stamp = (tmp_path / "c" / "logits.npy").stat().st_mtime_ns
    # poison the stored values: a reused cache returns them, a recomputed one would not
    arr = np.load(tmp_path / "c" / "logits.npy", mmap_mode="r+")
    arr[0, 0, 0] = 1234.0
    arr.flush()
    del arr
    again = ensure_cache(teachers, x, tmp_path / "c")
    assert again.fingerprint == first.fingerprint
    assert float(again.batch([0])[0, 0, 0]) == 1234.0
    assert (tmp_path / "c" / "logits.npy").stat().st_mtime_ns >= stamp


def test_changed_teacher_weight_recomputes(tmp_path):
    teachers, x = _teachers(), _x()
    old = ensure_cache(teachers, x, tmp_path / "c")
    with torch.no_grad():
        teachers[1].head.bias[2] += 1.0  # one weight of one teacher
    new = ensure_cache(teachers, x, tmp_path / "c")
    assert new.fingerprint != old.fingerprint
    assert torch.equal(new.all(), _direct(teachers, x))
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["fingerprint"] == new.fingerprint
    with pytest.raises(FormatError, match="stale"):
        open_cache(tmp_path / "c", old.fingerprint)


def test_changed_inputs_recompute(tmp_path):
    teachers, x = _teachers(), _x()
    old = ensure_cache(teachers, x, tmp_path / "c")
    x2 = x.clone()
    x2[3, 1] += 0.5
    new = ensure_cache(teachers, x2, tmp_path / "c")
    assert new.fingerprint != old.fingerprint
    assert torch.equal(new.all(), _direct(teachers, x2))


def test_changed_settings_recompute(tmp_path):
    teachers, x = _teachers(), _x()
    dense = ensure_cache(teachers, x, tmp_path / "c")
    sparse = ensure_cache(teachers, x, tmp_path / "c", topk=2)
    assert sparse.topk == 2 and sparse.fingerprint != dense.fingerprint
    half = ensure_cache(teachers, x, tmp_path / "c", dtype="float16")
    assert half.meta["dtype"] == "float16" and half.topk == 0
    assert len({dense.fingerprint, sparse.fingerprint, half.fingerprint}) == 3
    assert torch.equal(half.all(), _direct(teachers, x).half().float())


@pytest.mark.parametrize("keep", [0.5, 0.05])  # cut inside the data, or inside the header
def test_truncated_array_is_format_error_and_ensure_recomputes(tmp_path, keep):
    teachers, x = _teachers(), _x()
    ensure_cache(teachers, x, tmp_path / "c")
    path = tmp_path / "c" / "logits.npy"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(FormatError):
        open_cache(tmp_path / "c")
    cache = ensure_cache(teachers, x, tmp_path / "c")
    assert torch.equal(cache.all(), _direct(teachers, x))
    assert path.stat().st_size == len(data)


def test_missing_topk_array_is_format_error(tmp_path):
    teachers, x = _teachers(), _x()
    ensure_cache(teachers, x, tmp_path / "c", topk=2)
    (tmp_path / "c" / "rest.npy").unlink()
    with pytest.raises(FormatError, match="missing"):
        open_cache(tmp_path / "c")
    cache = ensure_cache(teachers, x, tmp_path / "c", topk=2)
    assert cache.topk == 2 and (tmp_path / "c" / "rest.npy").is_file()


def test_missing_meta_recomputes(tmp_path):
    teachers, x = _teachers(), _x()
    ensure_cache(teachers, x, tmp_path / "c")
    (tmp_path / "c" / "meta.json").unlink()
    with pytest.raises(FileNotFoundError):
        open_cache(tmp_path / "c")
    cache = ensure_cache(teachers, x, tmp_path / "c")
    assert (tmp_path / "c" / "meta.json").is_file()
    assert torch.equal(cache.all(), _direct(teachers, x))


@pytest.mark.parametrize("text", ["{not json", '["a list"]', '{"shape": [1, 2]}'])
def test_corrupt_meta_is_format_error_and_recomputed(tmp_path, text):
    teachers, x = _teachers(), _x()
    ensure_cache(teachers, x, tmp_path / "c")
    (tmp_path / "c" / "meta.json").write_text(text)
    with pytest.raises(FormatError):
        open_cache(tmp_path / "c")
    cache = ensure_cache(teachers, x, tmp_path / "c")
    assert torch.equal(cache.all(), _direct(teachers, x))


def test_wrong_shape_array_is_format_error(tmp_path):
    teachers, x = _teachers(), _x()
    ensure_cache(teachers, x, tmp_path / "c")
    np.save(tmp_path / "c" / "logits.npy", np.zeros((2, N - 1, C), dtype=np.float32))
    with pytest.raises(FormatError, match="shape"):
        open_cache(tmp_path / "c")


@pytest.mark.parametrize("kind", ["pickle", "text", "object-array", "empty"])
def test_foreign_array_is_format_error_in_our_words(tmp_path, kind):
    """numpy would call a non-.npy file pickled data and advise loading it unsafely: not here."""
    teachers, x = _teachers(), _x()
    ensure_cache(teachers, x, tmp_path / "c")
    path = tmp_path / "c" / "logits.npy"
    if kind == "pickle":
        path.write_bytes(pickle.dumps(np.zeros((N, 2, C), np.float32)))
    elif kind == "text":
        path.write_text("0.1 0.2 0.3\n")
    elif kind == "object-array":
        with open(path, "wb") as f:
            np.save(f, np.array([{}] * N, dtype=object), allow_pickle=True)
    else:
        path.write_bytes(b"")
    with pytest.raises(FormatError, match=r"logits\.npy: truncated or corrupt") as err:
        open_cache(tmp_path / "c")
    text = str(err.value)
    assert "\n" not in text
    assert not any(w in text for w in ("allow_pickle", "unsafe", "trust", "pickle.load"))
    assert torch.equal(ensure_cache(teachers, x, tmp_path / "c").all(), _direct(teachers, x))


def _dense_and_topk_targets(tmp_path, k, t):
    from ensemble_kd.losses import combined_soft_targets

    teachers, x = _teachers(), _x()
    dense = ensure_cache(teachers, x, tmp_path / "dense")
    sparse = ensure_cache(teachers, x, tmp_path / f"top{k}", topk=k)
    idx = np.arange(len(x))
    # teacher by teacher: each keeps its own top k (K, N, C) -> (K * N, C)
    return (torch.cat([combined_soft_targets(v, t).probs for v in dense.batch(idx)]),
            torch.cat([combined_soft_targets(v, t).probs for v in sparse.batch(idx)]))


@pytest.mark.parametrize("k", [1, 2])
def test_topk_cache_matches_the_dense_cache_at_temperature_one(tmp_path, k):
    """At T = 1 the top classes' target probabilities equal the dense cache's exactly."""
    dense, sparse = _dense_and_topk_targets(tmp_path, k, 1.0)  # (N, C)
    top = dense.topk(k, dim=-1).indices
    torch.testing.assert_close(sparse.gather(1, top), dense.gather(1, top), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse.sum(1), torch.ones(len(sparse)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [4.0, 20.0])
def test_topk_cache_would_be_wrong_above_temperature_one_so_distill_refuses_it(tmp_path, t):
    """The residual is right at T = 1 only: at T = 4 and 20 the top mass differs from the dense
    cache's (so a top-k cache at T != 1 must be refused, as DistillConfig does)."""
    from ensemble_kd.distill import DistillConfig

    dense, sparse = _dense_and_topk_targets(tmp_path, 1, t)
    top = dense.topk(1, dim=-1).indices
    assert (sparse.gather(1, top) - dense.gather(1, top)).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"top-k teacher cache .* temperature 1 only"):
        DistillConfig(temperature=t, cache_topk=1).validate()
    DistillConfig(temperature=1.0, cache_topk=1).validate()  # allowed
    DistillConfig(temperature=t, cache_topk=1, online=True).validate()  # no cache: allowed
