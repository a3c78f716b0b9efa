"""A zip checkpoint's tensors are the bytes of their own storage members, exactly, and a pickle's
size, storages and tensors are capped before torch's unpickler runs.

- A storage member shorter (or longer) than the storage the pickle describes, or missing, is
  refused: once it was read with the neighbouring zip bytes as values (``validate`` said valid,
  ``convert`` wrote garbage; PEFT's ``torch.load`` refuses such a file).
- Tensors read from the file are torch.load's, bit for bit: views that are not one C-ordered run
  (an offset, a slice, a transpose), parameters, bfloat16, and an archive in big-endian byte order.
- An archive of 300,000 tiny storages is refused from its end record, before Python's zipfile or
  torch reads it (it once cost 34 s and 1.1 GB); a pickle that makes too many tensors, or is too
  big, is refused by a C-speed scan or its size, before torch's pure-Python unpickler runs (torch
  is not even imported). Memory and CPU are the child's own (``run_measured``).
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from mptkit.formats._pickle_scan import MAX_MEMBERS, MAX_PICKLE_BYTES
from tests.support.banks import load_tensors
from tests.support.commands import one_error
from tests.support.crafted import many_storages
from tests.support.measured import killed_for_cpu, run_measured


def _bank_tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt_embeddings": torch.randn(4, 8, generator=g),
        "prefix_task_cols": torch.randn(3, 4, 2, generator=g),
        "prefix_task_rows": torch.randn(3, 2, 8, generator=g),
    }


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy the zip ``src`` to ``dst`` member by member (stored), ``change(name, data)`` -> new data
    (None drops the member)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


@pytest.fixture
def good(tmp_path) -> Path:
    p = tmp_path / "good.bin"
    torch.save(_bank_tensors(), p)
    return p


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("half", ["tensor 'prompt_embeddings'", "whose member holds 64 bytes", "a storage of 128 bytes (32 elements)"]),
        ("longer", ["tensor 'prompt_embeddings'", "whose member holds 256 bytes", "a storage of 128 bytes"]),
        ("missing", ["data/0", "corrupt"]),  # (torch itself finds no member for it)
    ],
)
@pytest.mark.parametrize("command", ["validate", "inspect --values", "convert"])
def test_a_storage_member_that_is_not_its_storage_is_refused(cli, good, tmp_path, how, words, command):
    def change(name, data):
        if not name.endswith("/data/0"):
            return data
        return {"half": data[: len(data) // 2], "longer": data + data, "missing": None}[how]

    bad = _rewrite(good, tmp_path / f"{how}.bin", change)
    argv = command.split() + [bad] + (["-o", tmp_path / "out.safetensors"] if command == "convert" else [])
    one_error(cli(*argv), *words, where=bad)
    assert not (tmp_path / "out.safetensors").exists()


def _strided_tensors():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 9, generator=g)
    return {
        "prompt_embeddings": base[1:5, 1:9],  # an offset view with a row stride of 9
        "prefix_task_cols": torch.randn(3, 2, 4, generator=g).transpose(1, 2),  # not C order
        "prefix_task_rows": torch.nn.Parameter(torch.randn(3, 2, 8, generator=g)),
    }


@pytest.mark.parametrize("form", ["views", "bfloat16", "rewritten by zipfile", "big-endian"])
def test_tensors_read_from_the_file_are_torch_loads(cli, tmp_path, form):
    tensors = _strided_tensors() if form == "views" else _bank_tensors(1)
    if form == "bfloat16":
        tensors = {k: v.bfloat16() for k, v in tensors.items()}
    src = tmp_path / "src.bin"
    torch.save(tensors, src)
    if form == "rewritten by zipfile":  # other offsets than torch's writer (no alignment padding)
        src = _rewrite(src, tmp_path / "zipfile.bin", lambda n, d: d)
    if form == "big-endian":  # the archive says big, and every storage's bytes are swapped

        def swap(name, data):
            if name.endswith("/byteorder"):
                return b"big"
            if "/data/" in name and not name.endswith("/data.pkl"):
                return bytes(b for i in range(0, len(data), 4) for b in reversed(data[i : i + 4]))
            return data

        src = _rewrite(src, tmp_path / "big.bin", swap)
    want = torch.load(src, weights_only=True)
    r = cli("convert", src, "-o", tmp_path / "out.safetensors")
    assert r.exit_code == 0, r.stderr
    got = load_tensors(tmp_path / "out.safetensors")
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v.detach()), k


def _refused_cheaply(path: Path, *words, rss_mb: float = 150, cpu_s: int = 20):
    m = run_measured("validate", path, cpu_limit_s=cpu_s)
    assert not killed_for_cpu(m), f"ran past {cpu_s} CPU seconds"
    assert m.returncode == 2, (m.returncode, m.stderr[-1500:])
    lines = m.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mptkit: error: {path}: "), m.stderr[-1500:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    print(f"{path.name}: peak RSS {m.peak_rss_mb:.0f} MB, {m.cpu_s:.2f} CPU s")
    assert m.peak_rss_mb < rss_mb, f"peak RSS {m.peak_rss_mb:.0f} MB"  # torch alone is ~250 MB: never imported


def test_an_archive_of_300000_tiny_storages_is_refused_from_its_end_record(tmp_path):
    path = many_storages(tmp_path / "many.bin", 300_000)
    _refused_cheaply(path, "the zip archive has 300,003 members", f"more than the {MAX_MEMBERS:,} mptkit reads")


def test_a_pickle_of_too_many_tensors_is_refused_before_torch_unpickles_it(tmp_path):
    """Few members, but the pickle makes MAX_MEMBERS + 1 tensors over one storage (within the size cap)."""
    count = MAX_MEMBERS + 1

    class Storage:
        pass

    storage = Storage()

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (storage, 0, (1,), (1,), False, OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 1) if isinstance(obj, Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump([Tensor() for _ in range(count)])
    assert len(buf.getvalue()) < MAX_PICKLE_BYTES
    path = tmp_path / "views.bin"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("views/data.pkl", buf.getvalue())
        z.writestr("views/byteorder", b"little")
        z.writestr("views/data/0", struct.pack("<f", 1.0))
        z.writestr("views/version", b"3\n")
    _refused_cheaply(path, f"its pickle makes more than {MAX_MEMBERS:,} tensors")


def test_a_pickle_larger_than_the_cap_is_refused_by_its_size(tmp_path):
    path = tmp_path / "big.bin"
    program = pickle.dumps({"numbers": list(range(1_000_000))}, protocol=2)  # a valid program, ~5 MB
    assert len(program) > MAX_PICKLE_BYTES
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("big/data.pkl", program)
        z.writestr("big/byteorder", b"little")
        z.writestr("big/version", b"3\n")
    _refused_cheaply(path, "its pickle 'big/data.pkl' is", f"more than the {MAX_PICKLE_BYTES:,} bytes of pickle")


def test_a_legacy_pickle_of_many_storages_is_refused_before_torch_unpickles_it(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({f"t{i}": torch.zeros(1) for i in range(MAX_MEMBERS + 1)}, path, _use_new_zipfile_serialization=False)
    _refused_cheaply(path, "its pickle", "more than")  # its storages, or its bytes, whichever comes first
