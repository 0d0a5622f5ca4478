"""Teacher-cache format versions: a 0.1.0 cache is read as it is, any other version is rebuilt.

The fixture ``tests/fixtures/run_v0_1_0/complete/student/cache`` was written by ensemble-kd 0.1.0
(format version 2) for the fixture run's two teachers over the digits transfer set.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble_kd.cache import (
    CACHE_VERSION,
    cache_fingerprint,
    ensure_cache,
    inputs_fingerprint,
    open_cache,
    teachers_fingerprint,
    write_cache,
)
from ensemble_kd.checkpoint import load_model
from ensemble_kd.data import make_transfer_set
from ensemble_kd.io import FormatError
from ensemble_kd.models import build_model
from ensemble_kd.predict import predict_logits

RUN = Path(__file__).parent / "fixtures" / "run_v0_1_0" / "complete"
CACHE = RUN / "student" / "cache"
_DROP = object()  # a meta.json field to remove


@pytest.fixture(scope="module")
def old_run(digits):
    """The fixture run's teachers and transfer inputs, and the logits they give (K, N, C)."""
    cfg = json.loads((RUN / "config.json").read_text())["config"]
    assert (cfg["dataset"], cfg["val_fraction"], cfg["data_seed"]) == ("digits", 0.1, 0)
    teachers = [load_model(RUN / "teachers" / f"teacher_{k}" / "model.pt")[0] for k in range(2)]
    x = make_transfer_set(digits, fraction=cfg["transfer_fraction"], seed=cfg["data_seed"]).x
    logits = torch.stack([predict_logits(t, x) for t in teachers])
    return teachers, x, logits


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "cache"
    shutil.copytree(CACHE, dst)
    return dst


def _set_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is _DROP]:
        del meta[key]
    (folder / "meta.json").write_text(json.dumps(meta))


def _version(folder: Path):
    return json.loads((folder / "meta.json").read_text()).get("version")


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_the_fixture_is_a_0_1_0_cache_of_the_current_format():
    meta = json.loads((CACHE / "meta.json").read_text())
    assert meta["version"] == CACHE_VERSION == 2 and meta["layout"] == "example-major"


def test_a_0_1_0_cache_is_read_as_it_is(old_run):
    teachers, x, logits = old_run
    fp = cache_fingerprint(teachers_fingerprint(teachers), inputs_fingerprint(x), "float32", 0)
    with open_cache(CACHE, fp) as cache:  # fingerprints are stable across versions too
        assert cache.shape == tuple(logits.shape)
        # the teachers run again here agree with what 0.1.0 stored up to float rounding (another
        # CPU's kernels may round differently; the stored values are read, not recomputed)
        torch.testing.assert_close(cache.all(), logits, rtol=1e-5, atol=1e-5)


def test_ensure_cache_reuses_a_0_1_0_cache(old_run, tmp_path, caplog):
    teachers, x, logits = old_run
    folder = _copy(tmp_path)
    before = (folder / "logits.npy").read_bytes()
    with caplog.at_level(logging.WARNING, logger="ensemble_kd.cache"):
        cache = ensure_cache(teachers, x, folder)
    assert caplog.text == ""  # not rebuilt
    assert (folder / "logits.npy").read_bytes() == before
    stored = torch.from_numpy(np.load(CACHE / "logits.npy")).permute(1, 0, 2)  # (K, N, C)
    assert torch.equal(cache.all(), stored)  # 0.1.0's own values, example-major on disk
    torch.testing.assert_close(cache.all(), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("version", "says"),
    [
        (CACHE_VERSION + 1, r"format version 3, written by a newer ensemble-kd"),
        (99, r"format version 99, written by a newer ensemble-kd"),
        (1, r"format version 1, from an older ensemble-kd"),
        (_DROP, r"records no format version"),
    ],
)
def test_another_version_is_refused_in_one_line_then_rebuilt(
    old_run, tmp_path, caplog, version, says
):
    teachers, x, logits = old_run
    folder = _copy(tmp_path)
    _set_meta(folder, version=version)
    with pytest.raises(FormatError, match=says) as err:
        open_cache(folder)
    line = _one_line(err)
    assert line.startswith(f"{folder / 'meta.json'}: teacher cache ")
    assert "reads version 2 only" in line and "rebuild it" in line
    with caplog.at_level(logging.WARNING, logger="ensemble_kd.cache"):
        cache = ensure_cache(teachers, x, folder)
    assert "recomputing the teacher cache" in caplog.text and "meta.json" in caplog.text
    assert _version(folder) == CACHE_VERSION
    assert torch.equal(cache.all(), logits)


def test_a_newer_version_is_judged_by_its_version_not_its_other_fields(tmp_path):
    """A later format may drop or redefine fields: say "newer", not "malformed"."""
    folder = _copy(tmp_path)
    (folder / "meta.json").write_text(json.dumps({"version": 3, "shapes": {"logits": [1, 2, 3]}}))
    with pytest.raises(FormatError, match="written by a newer ensemble-kd"):
        open_cache(folder)


@pytest.mark.parametrize("version", ["2", 2.0, True, [2]])
def test_a_version_that_is_not_an_integer_is_malformed(tmp_path, version):
    folder = _copy(tmp_path)
    _set_meta(folder, version=version)
    with pytest.raises(FormatError, match=r"malformed cache metadata \(format version") as err:
        open_cache(folder)
    _one_line(err)


def test_a_foreign_layout_is_refused(tmp_path):
    folder = _copy(tmp_path)
    _set_meta(folder, layout="teacher-major")
    with pytest.raises(FormatError, match="unknown cache layout 'teacher-major'"):
        open_cache(folder)


def test_an_array_of_another_dtype_is_refused(tmp_path):
    folder = _copy(tmp_path)
    arr = np.load(folder / "logits.npy")
    np.save(folder / "logits.npy", arr.astype(np.float64))
    with pytest.raises(FormatError, match=r"logits\.npy: shape and dtype .*'<f8'.*expected"):
        open_cache(folder)


def test_a_version_1_cache_is_never_misread_even_where_its_shape_fits(tmp_path, caplog):
    """Version 1 stored (K, N, C). With K == N its array has the shape version 2 expects, and even
    with the fingerprint version 2 asks for, its version alone keeps it from being read."""
    torch.manual_seed(0)
    teachers = [build_model("mlp", (3,), 4, widths=[5]) for _ in range(2)]
    x = torch.randn(2, 3)
    logits = torch.stack([predict_logits(t, x) for t in teachers])  # (K=2, N=2, C)
    folder = tmp_path / "v1"
    write_cache(teachers, x, folder)
    np.save(folder / "logits.npy", logits.numpy())  # teacher-major, as version 1 wrote it
    meta = json.loads((folder / "meta.json").read_text())
    del meta["layout"]  # version 1 had none
    (folder / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    misread = torch.from_numpy(np.load(folder / "logits.npy")).permute(1, 0, 2)
    assert not torch.equal(misread, logits)  # what reading it as version 2 would give

    with pytest.raises(FormatError, match="format version 1, from an older ensemble-kd"):
        open_cache(folder, meta["fingerprint"])
    with caplog.at_level(logging.WARNING, logger="ensemble_kd.cache"):
        cache = ensure_cache(teachers, x, folder)
    assert "format version 1" in caplog.text
    assert torch.equal(cache.all(), logits)
