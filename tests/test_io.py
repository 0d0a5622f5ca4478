"""load_tensors on damaged and foreign files: one line in our words, never torch's unsafe advice.

Torch's own message for a file its safe loader refuses advises re-running ``torch.load`` with
``weights_only=False``, which would run a stranger's code. Every refusal here is one line naming
the file, and no message (nor the traceback's chained context) passes that advice on.
"""

from __future__ import annotations

import collections
import pickle
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble_kd.io import FormatError, load_tensors, save_tensors


class Opaque:
    """An arbitrary class: unpickling it means importing this module and building an instance."""

    def __init__(self, value: int = 3):
        self.value = value


def _good(path: Path) -> Path:
    save_tensors(path, {"w": torch.arange(1000, dtype=torch.float32), "epoch": 2})
    return path


def _object_in_dict(p: Path) -> None:
    torch.save({"w": torch.ones(3), "extra": Opaque()}, p)


def _object_nested(p: Path) -> None:
    torch.save({"state": collections.OrderedDict(w=torch.ones(2), o=[Opaque()])}, p)


def _object_legacy(p: Path) -> None:
    torch.save({"extra": Opaque()}, p, _use_new_zipfile_serialization=False)


def _plain_pickle(p: Path) -> None:
    p.write_bytes(pickle.dumps({"extra": Opaque()}))


def _truncated(p: Path) -> None:
    raw = _good(p).read_bytes()
    p.write_bytes(raw[: len(raw) // 2])


def _truncated_head(p: Path) -> None:
    p.write_bytes(_good(p).read_bytes()[:10])


def _truncated_legacy(p: Path) -> None:
    torch.save({"w": torch.ones(1000)}, p, _use_new_zipfile_serialization=False)
    p.write_bytes(p.read_bytes()[:40])


def _text(p: Path) -> None:
    p.write_text("epoch,loss\n1,0.5\nthis is not a checkpoint\n")


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _garbage(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).bytes(5000))


def _npy(p: Path) -> None:
    with open(p, "wb") as f:
        np.save(f, np.ones(4))


def _foreign_zip(p: Path) -> None:
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("notes.txt", "hello")


OBJECT_CASES = {
    "object-in-dict": (_object_in_dict, r"a pickled Python object \([\w.]*test_io\.Opaque\)"),
    "object-nested": (_object_nested, r"a pickled Python object \([\w.]*test_io\.Opaque\)"),
    "object-legacy-format": (_object_legacy, r"a pickled Python object \([\w.]*test_io\.Opaque\)"),
}
DAMAGED = r"cannot be loaded safely \(truncated, corrupt or not an ensemble-kd file\)"
DAMAGED_CASES = {
    "truncated": (_truncated, DAMAGED + ": an incomplete or damaged PyTorch archive"),
    "truncated-head": (_truncated_head, DAMAGED + ": an incomplete or damaged PyTorch archive"),
    "truncated-legacy": (_truncated_legacy, DAMAGED),
    "text": (_text, DAMAGED + ": not a file written by torch.save"),
    "empty": (_empty, DAMAGED + ": the file is empty"),
    "garbage": (_garbage, DAMAGED),
    "npy": (_npy, DAMAGED + ": not a file written by torch.save"),
    "plain-pickle": (_plain_pickle, DAMAGED + ": not a file written by torch.save"),
    "foreign-zip": (_foreign_zip, DAMAGED),
}
CASES = {**OBJECT_CASES, **DAMAGED_CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refusal_is_one_line_naming_the_file_without_unsafe_advice(tmp_path, case):
    make, pattern = CASES[case]
    path = tmp_path / f"{case}.pt"
    make(path)
    with pytest.raises(FormatError, match=pattern) as err:
        load_tensors(path)
    text = str(err.value)
    assert text.startswith(f"{path}: cannot be loaded safely")
    assert "\n" not in text and len(text) < 400
    assert "weights_only" not in text and "trust" not in text
    # torch's message is not even chained: a traceback shows only ours
    assert err.value.__suppress_context__ and err.value.__cause__ is None
    shown = "".join(traceback.format_exception(err.value))
    assert "weights_only" not in shown


@pytest.mark.parametrize("case", sorted(OBJECT_CASES))
def test_objects_are_named_and_the_refusal_says_why(tmp_path, case):
    path = tmp_path / "model.pt"
    OBJECT_CASES[case][0](path)
    with pytest.raises(FormatError, match="never unpickles") as err:
        load_tensors(path)
    assert "could run code from the file" in str(err.value)


def test_refusal_prints_no_warning(tmp_path, recwarn):
    path = tmp_path / "p.pt"
    _plain_pickle(path)  # torch warns about its pickle protocol before refusing
    with pytest.raises(FormatError):
        load_tensors(path)
    assert not [w for w in recwarn if "pickle" in str(w.message)]


def test_good_files_still_load(tmp_path):
    obj = load_tensors(_good(tmp_path / "good.pt"))
    assert obj["epoch"] == 2 and torch.equal(obj["w"], torch.arange(1000, dtype=torch.float32))
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_tensors(legacy)["w"], torch.ones(2))


def test_not_a_dict_and_missing_file(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(torch.ones(2), path)
    with pytest.raises(FormatError, match=r"t\.pt: expected a dict of tensors, found Tensor"):
        load_tensors(path)
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt: no such file"):
        load_tensors(tmp_path / "nothing.pt")
