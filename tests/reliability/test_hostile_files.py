"""Hostile files: every crafted input that once hung mptkit, made it hold
far more memory than the file brought, crashed it with "internal error", or got past checks that
safetensors and PEFT apply. Each case runs the real CLI in a child process under a CPU-time limit,
with its own peak RSS read from ``wait4``: now one sentence and exit 2 (or a correct result), the
input unchanged, time and memory bounded (the bounds are generous; the attacks took 650 MB-2.1 GB
and up to 235 s).

    attack                                        before                     after: see test
    40,000 task names that do not sort            validate 92 s              test_unsortable_task_names
    200,000 names, one repeated                   235 s                      test_many_names_one_repeat
    pickle of zeros(1).expand(20000, 25000)       2.1 GB, "valid"            test_broadcast_view_pickle
    1.2 MB deflate zip bomb .bin                  1.4 GB                     test_zip_bomb
    sparse 1 GiB adapter_config.json              2 GB                       test_huge_adapter_config
    95 MB header, 1.38 M tensors                  44 s, 1.3 GB               test_header_with_millions_of_tensors
    3 M metadata keys                             650 MB                     test_millions_of_metadata_keys
    650 k provenance entries                      690 MB                     test_huge_provenance
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from tests.support.measured import killed_for_cpu, run_measured

#: generous bounds on the child's peak RSS: without torch mptkit runs in ~25 MB, with it ~230 MB
NO_TORCH_MB = 250
WITH_TORCH_MB = 700


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def _refused(path: Path, *words, cmd="validate", limit_mb=NO_TORCH_MB, cpu=60, extra=()):
    """Run ``mptkit CMD PATH``; assert exit 2 with one-sentence errors naming the words, bounded
    memory and CPU, and the input unchanged."""
    before = _digest(path) if path.is_file() or path.is_dir() else None
    m = run_measured(cmd, path, *extra, cpu_limit_s=cpu)
    assert not killed_for_cpu(m), f"ran past {cpu} CPU seconds"
    assert m.returncode == 2, (m.returncode, m.stdout, m.stderr[-2000:])
    lines = m.stderr.strip().splitlines()
    assert lines and all(ln.startswith("mptkit: error: ") for ln in lines), m.stderr[-2000:]
    assert "internal error" not in m.stderr and "Traceback" not in m.stderr
    for w in words:
        assert w in m.stderr, (w, m.stderr[-2000:])
    print(f"{cmd} {path.name}: exit {m.returncode}, peak RSS {m.peak_rss_mb:.0f} MB, {m.cpu_s:.2f} CPU s")
    assert m.peak_rss_mb < limit_mb, f"peak RSS {m.peak_rss_mb:.0f} MB"
    if before is not None:
        assert _digest(path) == before, "the input changed"
    return m


def _bank_file(
    path: Path, T: int, meta: dict | None = None, *, raw_meta: str | None = None, pe_entry: str | None = None
) -> Path:
    """A tiny F32 bank (N = r = d = 1) with T tasks, its header written by hand so that it can hold
    what no writer would write: ``meta`` (or ``raw_meta``, JSON text) as __metadata__."""
    n = 4 * T
    pe = pe_entry or '{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]}'
    entries = [
        f'"prompt_embeddings":{pe}',
        f'"prefix_task_cols":{{"dtype":"F32","shape":[{T},1,1],"data_offsets":[4,{4 + n}]}}',
        f'"prefix_task_rows":{{"dtype":"F32","shape":[{T},1,1],"data_offsets":[{4 + n},{4 + 2 * n}]}}',
    ]
    if raw_meta is None:
        raw_meta = json.dumps({"format": "pt", **(meta or {})}, ensure_ascii=False)
    head = ("{" + (f'"__metadata__":{raw_meta},' if raw_meta else "") + ",".join(entries) + "}").encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        f.write(struct.pack("<f", 1.0) * (1 + 2 * T))
    return path


# -- linear name checks ----------------------------------------------------------------------------
def test_unsortable_task_names(tmp_path):
    names = [0] + [f"n{i}" for i in range(39_999)]
    p = _bank_file(tmp_path / "names.safetensors", 40_000, {"mptkit.task_names": json.dumps(names)})
    assert p.stat().st_size < 1_000_000
    _refused(p, "'mptkit.task_names': item 0: expected string, found 0", cpu=20)


def test_many_names_one_repeat(tmp_path):
    names = [f"n{i}" for i in range(200_000)] + ["n7"]
    p = _bank_file(tmp_path / "names.safetensors", 200_001, {"mptkit.task_names": json.dumps(names)})
    _refused(p, 'entries must all be different, found "n7" more than once', cpu=30)


def test_task_names_refuse_c1_and_bidi_controls(tmp_path):
    for i, bad in enumerate(["a\x9b31mb", "x\x85y", "left\u202eright", "p\u2028q"]):
        p = _bank_file(tmp_path / f"c{i}.safetensors", 2, {"mptkit.task_names": json.dumps([bad, "ok"])})
        m = _refused(p, "item 0:", "is not allowed")
        assert "\x9b" not in m.stderr and "\u202e" not in m.stderr  # escaped when printed


# -- memory the file did not bring ---------------------------------------------------------------------
def test_broadcast_view_pickle(tmp_path):
    p = tmp_path / "expand.bin"
    torch.save(
        {
            "prompt_embeddings": torch.zeros(1).expand(20000, 25000),
            "prefix_task_cols": torch.zeros(1, 20000, 1),
            "prefix_task_rows": torch.zeros(1, 1, 25000),
        },
        p,
    )
    assert p.stat().st_size < 300_000
    _refused(
        p,
        "tensor 'prompt_embeddings' is a view of shape [20000, 25000] (strides [0, 0]",
        "over a storage of only 4 bytes",
        limit_mb=WITH_TORCH_MB,
    )


def _storage_pickle(numel: int) -> bytes:
    """The data.pkl of torch.save({"prompt_embeddings": <float tensor of numel over storage "0">})."""

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), 0, (numel,), (1,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, Storage) else None

    import io

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"prompt_embeddings": Tensor()})
    return buf.getvalue()


def test_zip_bomb(tmp_path):
    real = tmp_path / "real.bin"
    torch.save({"prompt_embeddings": torch.zeros(4)}, real)
    numel = 350_000_000  # 1.4 GB of float32 zeros
    bomb = tmp_path / "bomb.bin"
    with zipfile.ZipFile(real) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for item in zin.infolist():
            if item.filename.endswith("/data.pkl"):
                zout.writestr(item.filename, _storage_pickle(numel))
            elif item.filename.endswith("/data/0"):
                info = zipfile.ZipInfo(item.filename)
                info.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(info, "w", force_zip64=True) as w:
                    chunk = bytes(1 << 24)
                    for _ in range(numel * 4 // len(chunk)):
                        w.write(chunk)
                    w.write(bytes(numel * 4 % len(chunk)))
            else:
                zout.writestr(item, zin.read(item.filename))
    assert bomb.stat().st_size < 2_000_000
    _refused(
        bomb,
        "member 'real/data/0' is compressed",
        "would inflate to 1,400,000,000",
        "does not inflate",
        limit_mb=WITH_TORCH_MB,
    )


def test_huge_adapter_config(tmp_path, example_bank):
    folder = tmp_path / "bank"
    shutil.copytree(example_bank, folder)
    with open(folder / "adapter_config.json", "r+b") as f:
        f.truncate(1 << 30)  # sparse: the real config, then NUL bytes to 1 GiB
    _refused(folder, "adapter_config.json: the file is 1,073,741,824 bytes, more than the 1,000,000")


def test_header_with_millions_of_tensors(tmp_path):
    p = tmp_path / "many.safetensors"
    body = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(1_380_000))
    head = ("{" + body + "}").encode()
    head += b" " * (-len(head) % 8)
    p.write_bytes(struct.pack("<Q", len(head)) + head)
    assert p.stat().st_size > 80_000_000
    _refused(
        p,
        "the header holds up to",
        "JSON values (counting ':', ',', '[' and '{'), more than the 3,000,000 mptkit reads",
        limit_mb=400,
    )


def test_many_tensors_within_the_value_cap_are_capped_by_count(tmp_path):
    p = tmp_path / "many.safetensors"
    body = ",".join(f'"t{i}":{{"dtype":"F32","shape":[],"data_offsets":[0,0]}}' for i in range(210_000))
    head = ("{" + body + "}").encode()
    p.write_bytes(struct.pack("<Q", len(head)) + head)
    _refused(p, "the header lists 210,000 tensors, more than the 200,000 mptkit reads", limit_mb=400)


def test_millions_of_metadata_keys(tmp_path):
    meta = "{" + ",".join(f'"k{i}":""' for i in range(3_000_000)) + "}"
    p = _bank_file(tmp_path / "meta.safetensors", 2, raw_meta=meta)
    _refused(p, "JSON values (counting ':', ',', '[' and '{'), more than the 3,000,000 mptkit reads")
    meta = "{" + ",".join(f'"k{i}":""' for i in range(20_000)) + "}"
    p = _bank_file(tmp_path / "meta2.safetensors", 2, raw_meta=meta)
    _refused(p, "__metadata__ holds 20,000 keys, more than the 10,000 mptkit reads")


def test_huge_provenance(tmp_path):
    entry = {"operation": "derive", "arguments": {"mode": "exact"}, "sources": []}
    p = _bank_file(tmp_path / "prov.safetensors", 2, {"mptkit.provenance": json.dumps([entry] * 650_000)})
    _refused(p, "JSON values (counting ':', ',', '[' and '{'), more than the 3,000,000 mptkit reads")
    p = _bank_file(tmp_path / "prov2.safetensors", 2, {"mptkit.provenance": json.dumps([entry] * 20_000)})
    _refused(p, "lists 20,000 provenance entries, more than the 10,000 mptkit reads")


# -- no "internal error" -------------------------------------------------------------------------------
def test_deep_json_in_metadata_and_config(tmp_path, example_bank):
    deep = '{"a":' * 980 + "1" + "}" * 980
    p = _bank_file(tmp_path / "deep.safetensors", 2, {"mptkit.config": deep})
    _refused(p, "__metadata__ key 'mptkit.config' must hold JSON text", "nested too deeply")
    folder = tmp_path / "bank"
    shutil.copytree(example_bank, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    text = json.dumps(cfg)[:-1] + ', "x": ' + "[" * 980 + "]" * 980 + "}"
    (folder / "adapter_config.json").write_text(text)
    _refused(folder, "adapter_config.json: the JSON is nested too deeply")
    _refused(folder, "nested too deeply", cmd="inspect")


@pytest.mark.parametrize("what", ["sparse", "meta", "stride-0"])
def test_pickles_of_tensors_without_plain_data(tmp_path, what):
    pe = {
        "sparse": torch.eye(4).to_sparse(),
        "meta": torch.empty(4, 4, device="meta"),
        "stride-0": torch.ones(1, 1).expand(4, 4),
    }[what]
    p = tmp_path / f"{what}.pt"
    torch.save(
        {"prompt_embeddings": pe, "prefix_task_cols": torch.ones(1, 4, 1), "prefix_task_rows": torch.ones(1, 1, 4)}, p
    )
    words = {"sparse": "is a sparse_coo tensor", "meta": "is a meta tensor", "stride-0": "is a view of shape [4, 4]"}
    for cmd in ("validate", "inspect", "derive"):
        extra = ("--mode", "exact", "--task", "0", "-o", tmp_path / "out.safetensors") if cmd == "derive" else ()
        _refused(p, words[what], cmd=cmd, limit_mb=WITH_TORCH_MB, extra=extra)
    assert not (tmp_path / "out.safetensors").exists()


# -- what safetensors and PEFT refuse, mptkit refuses --------------------------------------------------
def test_duplicate_keys_and_negative_zero(tmp_path):
    p = tmp_path / "dup-meta.safetensors"
    _bank_file(p, 2, raw_meta='{"format":"pt"},"__metadata__":{"format":"pt"}')
    _refused(p, 'the key "__metadata__" appears twice')
    p = _bank_file(
        tmp_path / "dup-dtype.safetensors",
        2,
        pe_entry='{"dtype":"F32","dtype":"F32","shape":[1,1],"data_offsets":[0,4]}',
    )
    _refused(p, 'the key "dtype" appears twice')
    p = _bank_file(tmp_path / "negzero.safetensors", 2, pe_entry='{"dtype":"F32","shape":[1,1],"data_offsets":[-0,4]}')
    _refused(p, "the number -0")
    from safetensors import safe_open

    for name in ("dup-meta", "dup-dtype", "negzero"):  # the reference parser refuses them too
        with pytest.raises(Exception):  # noqa: B017 (whatever the reference parser raises)
            safe_open(str(tmp_path / f"{name}.safetensors"), "pt")


def test_config_types_peft_rejects_are_errors(tmp_path, example_bank):
    folder = tmp_path / "bank"
    shutil.copytree(example_bank, folder)
    text = (folder / "adapter_config.json").read_text()
    (folder / "adapter_config.json").write_text(text.replace('"num_virtual_tokens": 6', '"num_virtual_tokens": 6.0'))
    _refused(folder, "field 'num_virtual_tokens': expected integer, found 6.0")
    _refused(
        folder,
        "expected integer, found 6.0",
        cmd="derive",
        extra=("--mode", "exact", "--task", "0", "-o", tmp_path / "out"),
    )
    assert not (tmp_path / "out").exists()


# -- a FIFO, a small address-space limit ----------------------------------------------------------------
def test_fifo_adapter_config_is_not_missing(tmp_path, example_bank):
    folder = tmp_path / "bank"
    folder.mkdir()
    shutil.copy(example_bank / "adapter_model.safetensors", folder)
    os.mkfifo(folder / "adapter_config.json")
    _refused(folder, "adapter_config.json: not a regular file")


def test_small_address_space_limit(tmp_path, example_bank):
    limit = 500 << 20  # torch's import aborts (exit 134) or OpenBLAS exits under ~650 MB
    m = run_measured("rank", example_bank, "--rank", "1", "-o", tmp_path / "r1.safetensors", address_space=limit)
    assert m.returncode == 2, (m.returncode, m.stderr)
    assert m.stderr.startswith("mptkit: error: this command needs torch") and "ulimit -v" in m.stderr
    assert len(m.stderr.strip().splitlines()) == 1 and not (tmp_path / "r1.safetensors").exists()
    m = run_measured(
        "derive", example_bank, "--mode", "exact", "--task", "1", "-o", tmp_path / "t1.safetensors", address_space=limit
    )  # moving bytes needs no torch: it still works
    assert m.returncode == 0, m.stderr
    m = run_measured(
        "derive", example_bank, "--mode", "average", "-o", tmp_path / "avg.safetensors", address_space=limit
    )  # nor does averaging (numpy)
    assert m.returncode == 0, m.stderr
    assert run_measured("validate", example_bank, address_space=limit).returncode == 0


def test_an_import_error_is_one_sentence(tmp_path, example_bank):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "torch.py").write_text(
        "raise ImportError('libtorch_cpu.so: failed to map segment from shared object', name='torch')\n"
    )
    m = run_measured(
        "rank", example_bank, "--rank", "1", "-o", tmp_path / "a.safetensors", env={"PYTHONPATH": str(shadow)}
    )
    assert m.returncode == 2 and "internal error" not in m.stderr, m.stderr
    assert m.stderr.startswith("mptkit: error: cannot import torch (libtorch_cpu.so: failed to map segment")
