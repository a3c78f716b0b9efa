"""`mptkit validate` and `mptkit inspect`: PEFT-saved banks, values, every kind of broken file."""

import json
import os
import pickle
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.support.banks import random_bank, write_bank
from tests.support.commands import error_lines, loaded_modules, run_mptkit

KINDS = {"seq2seq": ("SEQ_2_SEQ_LM", 2), "causal": ("CAUSAL_LM", 1)}
ST_DTYPE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
ALL = [(k, dt, safe, bare) for k in KINDS for dt in ST_DTYPE for safe in (True, False) for bare in (False, True)]


def data_file(folder: Path) -> Path:
    st = folder / "adapter_model.safetensors"
    return st if st.exists() else folder / "adapter_model.bin"


def read_tensors(path: Path) -> dict:
    path = data_file(path) if path.is_dir() else path
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return {k: v.detach() for k, v in torch.load(path, weights_only=True).items()}


def raw_safetensors(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    """A file with any header (dict or bytes) and any header-length field."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if length is None else length) + h + data)
    return path


def header_of(path: Path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def expect_error(cli, path, *words, values=False):
    """validate and inspect both exit 2 with one clear line per problem naming the file."""
    args = ("--values",) if values else ()
    for cmd in ("validate", "inspect"):
        r = cli(cmd, *args, path)
        lines = error_lines(r, *words, where=path)
        if cmd == "validate":
            assert r.stdout == ""
    return lines


# -- PEFT-saved banks ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, dtype, safe, bare", ALL)
def test_peft_saved_bank_validates_and_inspects(cli, peft_banks, kind, dtype, safe, bare):
    folder = peft_banks(kind, dtype, safe)
    path = data_file(folder) if bare else folder
    task_type, S = KINDS[kind]
    tensors = read_tensors(folder)
    T, N, r = tensors["prefix_task_cols"].shape
    d = tensors["prompt_embeddings"].shape[1]
    assert (T, N, r, d) == (3, 5 * S, 2, 24)

    for args in ((), ("--values",)):
        res = cli("validate", *args, path)
        assert res.exit_code == 0 and res.stdout == f"{path}: valid (bank)\n"
        # an adapter folder, which engines load, says once that they would serve its shared prompt
        assert res.stderr == "" if bare else res.stderr.count("shared prompt to every task") == 1

    res = cli("inspect", "--json", path)
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    fmt = {
        (False, True): "peft-adapter",
        (False, False): "peft-adapter (.bin)",
        (True, True): "safetensors",
        (True, False): "pickle",
    }[(bare, safe)]
    assert info["format"] == fmt and info["path"] == str(path)
    assert info["file"] == str(data_file(folder)) and info["file_size"] == data_file(folder).stat().st_size
    assert info["dtype"] == ST_DTYPE[dtype] and info["kind"] == "bank"
    assert (info["num_tasks"], info["N"], info["rank"], info["d"]) == (T, N, r, d)
    if bare:
        assert info["num_virtual_tokens"] is None and info["num_transformer_submodules"] is None
    else:
        assert (info["num_virtual_tokens"], info["num_transformer_submodules"], info["task_type"]) == (5, S, task_type)
    shared, per_task = N * d, N * r + r * d
    assert info["parameters"] == {
        "shared": shared,
        "per_task": per_task,
        "total": shared + T * per_task,
        "as_separate_prompts": T * shared,
        "saving": pytest.approx(1 - (shared + T * per_task) / (T * shared)),
    }
    assert info["tensors"] == {k: {"dtype": ST_DTYPE[dtype], "shape": list(v.shape)} for k, v in tensors.items()}

    res = cli("inspect", path)
    assert res.exit_code == 0
    text = res.stdout
    assert f"{path}  ({fmt}, " in text.splitlines()[0]
    assert f"dtype            {ST_DTYPE[dtype]}" in text
    if bare:
        assert f"prompt length N  {N} (virtual tokens x submodules unknown: no config)" in text
    else:
        assert f"prompt length N  {N} = 5 virtual tokens x {S} submodule{'s' if S > 1 else ''}, {task_type}" in text
    assert f"hidden size d    {d}" in text and f"tasks T          {T}" in text and f"rank r           {r}" in text
    assert f"shared {shared:,} + per task {per_task:,} x {T} = {shared + T * per_task:,}" in text
    assert f"{T} separate prompts would hold {T * shared:,}" in text

    # --values: norms and non-finite counts computed with torch from the tensors themselves
    res = cli("inspect", "--values", "--json", path)
    v = json.loads(res.stdout)["values"]
    pe, cols, rows = (tensors[k].double() for k in ("prompt_embeddings", "prefix_task_cols", "prefix_task_rows"))
    assert v["nonfinite"] == {"prompt_embeddings": 0, "prefix_task_cols": 0, "prefix_task_rows": 0}
    assert v["prompt_embeddings_norm"] == pytest.approx(float(pe.norm()), rel=1e-12)
    assert [t["task"] for t in v["tasks"]] == list(range(T))
    for k, t in enumerate(v["tasks"]):
        assert t["cols_norm"] == pytest.approx(float(cols[k].norm()), rel=1e-12)
        assert t["rows_norm"] == pytest.approx(float(rows[k].norm()), rel=1e-12)
        assert t["prompt_norm"] == pytest.approx(float((pe * (cols[k] @ rows[k])).norm()), rel=1e-12)
    norms = [t["prompt_norm"] for t in v["tasks"]]
    assert len(set(norms)) == T  # non-trivial banks: every task differs
    text = cli("inspect", "--values", path).stdout
    assert re.search(rf"\n\s+1\s+{re.escape(format(norms[1], '.6g'))}\s", text), text  # task 1's row, |prompt| first


def test_inspect_lists_names_metadata_and_provenance(cli, tmp_path):
    p = random_bank(tmp_path / "b.safetensors", T=3, names=["sst2", "mnli", "qa"])
    header, data = header_of(p)
    header["__metadata__"]["mptkit.provenance"] = json.dumps(
        [
            {
                "operation": "slice",
                "arguments": {"tasks": "0-2"},
                "sources": [{"name": "big.safetensors", "sha256": "ab" * 32}],
                "mptkit_version": "0.1.0",
            }
        ]
    )
    header["__metadata__"]["trained_by"] = "me"
    header["__metadata__"]["z"] = "\x1b[2Jgone\nline"
    raw_safetensors(p, json.dumps(header).encode() + b" " * 8, data)
    info = json.loads(cli("inspect", "--json", p).stdout)
    assert info["task_names"] == ["sst2", "mnli", "qa"]
    assert info["metadata"] == {"trained_by": "me", "z": "\x1b[2Jgone\nline"}
    assert info["provenance"][0]["operation"] == "slice"
    text = cli("inspect", p).stdout
    assert "task names       0:sst2, 1:mnli, 2:qa" in text
    assert "metadata         trained_by=me, z=\\x1b[2Jgone\\nline" in text  # no terminal escapes
    assert "\x1b" not in text and len(text.splitlines()) == 12
    assert "provenance       1. slice tasks=0-2 from big.safetensors (abababababab) [mptkit 0.1.0]" in text


def test_shared_only_and_single_task_banks(cli, tmp_path):
    save_file({"prompt_embeddings": torch.randn(4, 6)}, str(tmp_path / "s.safetensors"), metadata={"format": "pt"})
    r = cli("validate", tmp_path / "s.safetensors")
    assert r.exit_code == 0 and "valid (shared-only)" in r.stdout
    info = json.loads(cli("inspect", "--json", "--values", tmp_path / "s.safetensors").stdout)
    assert info["kind"] == "shared-only" and info["num_tasks"] == 0 and info["parameters"]["total"] == 24
    assert "parameters       24 (shared prompt only)" in cli("inspect", tmp_path / "s.safetensors").stdout
    p = random_bank(tmp_path / "one.safetensors", T=1)
    assert "valid (single-task)" in cli("validate", p).stdout
    assert "costing" in cli("inspect", p).stdout  # one task: the factors cost more than one prompt


# -- values: NaN and Inf ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_nonfinite_values_are_counted_per_tensor_and_per_task(cli, peft_banks, tmp_path, dtype):
    folder = tmp_path / "bank"
    shutil.copytree(peft_banks("seq2seq", dtype, True), folder)
    t = read_tensors(folder)
    t["prompt_embeddings"][3, 0] = float("nan")
    t["prefix_task_cols"][1, 2, 0] = float("inf")
    t["prefix_task_rows"][2, 1, 5] = float("-inf")
    t["prefix_task_rows"][2, 0, 7] = float("nan")
    save_file(t, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})

    assert cli("validate", folder).exit_code == 0  # header-level: valid
    r = cli("validate", "--values", folder)
    assert r.exit_code == 2
    err = r.stderr
    assert f"{folder}: tensor 'prompt_embeddings' holds 1 NaN/Inf values" in err
    assert f"{folder}: tensor 'prefix_task_cols' holds 1 NaN/Inf values" in err
    assert f"{folder}: tensor 'prefix_task_rows' holds 2 NaN/Inf values" in err
    pe, cols, rows = (t[k].double() for k in ("prompt_embeddings", "prefix_task_cols", "prefix_task_rows"))
    for k in range(3):
        full = pe * (cols[k] @ rows[k])
        expected = (
            f"task {k} has non-finite values: {int((~cols[k].isfinite()).sum())} in prefix_task_cols, "
            f"{int((~rows[k].isfinite()).sum())} in prefix_task_rows, {int((~full.isfinite()).sum())} "
            "in its full prompt"
        )
        assert expected in err
    v = json.loads(cli("inspect", "--values", "--json", folder).stdout)["values"]
    assert v["nonfinite"] == {"prompt_embeddings": 1, "prefix_task_cols": 1, "prefix_task_rows": 2}
    assert [(x["nonfinite_cols"], x["nonfinite_rows"]) for x in v["tasks"]] == [(0, 0), (1, 0), (0, 2)]
    assert all(x["nonfinite_prompt"] >= 1 for x in v["tasks"])  # the NaN in the shared prompt reaches all
    rep = json.loads(cli("validate", "--values", "--json", folder).stdout)
    assert rep["valid"] is False and rep["nonfinite"] == v["nonfinite"] and len(rep["problems"]) == 6
    assert "NON-FINITE 1" in cli("inspect", "--values", folder).stdout


# -- broken files ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_bank(tmp_path_factory, peft_banks):
    """The bytes of a real PEFT-saved adapter_model.safetensors (seq2seq, F32)."""
    return data_file(peft_banks("seq2seq", "float32", True)).read_bytes()


def test_empty_file(cli, tmp_path):
    for name in ("e.safetensors", "e.bin", "e.pt"):
        (tmp_path / name).write_bytes(b"")
        expect_error(cli, tmp_path / name, "the file is empty (0 bytes)")


def test_truncated_downloads(cli, tmp_path, real_bank):
    (n,) = struct.unpack("<Q", real_bank[:8])
    h = 8 + n
    cuts = {
        1: "the file is only 1 bytes",
        7: "the file is only 7 bytes",
        8: f"the header length field says {n} bytes but only 0 bytes follow it (a truncated download",
        9: "but only 1 bytes follow it (a truncated download",
        h // 2: "(a truncated download",
        h - 1: f"the header length field says {n} bytes but only {n - 1} bytes follow it",
        h: "data ends at byte",
        h + 10: "(a truncated download?)",
        len(real_bank) - 1: "(a truncated download?)",
    }
    for cut, words in cuts.items():
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(real_bank[:cut])
        expect_error(cli, p, words)


def test_truncated_pickles(cli, tmp_path):
    t = {
        "prompt_embeddings": torch.randn(10, 24),
        "prefix_task_cols": torch.randn(3, 10, 2),
        "prefix_task_rows": torch.randn(3, 2, 24),
    }
    zipped, legacy = tmp_path / "z.bin", tmp_path / "l.bin"
    torch.save(t, zipped)
    torch.save(t, legacy, _use_new_zipfile_serialization=False)
    for src in (zipped, legacy):
        data = src.read_bytes()
        for cut in (2, 40, len(data) // 2, len(data) - 30):
            p = tmp_path / f"cut{cut}-{src.name}"
            p.write_bytes(data[:cut])
            lines = expect_error(cli, p)
            assert any(w in lines[0] for w in ("ends early", "truncated", "corrupt")), lines


def test_pipes_are_refused_without_waiting_for_a_writer(tmp_path):
    for name in ("fifo.safetensors", "fifo.bin"):
        os.mkfifo(tmp_path / name)
        r = run_mptkit("validate", tmp_path / name, timeout=60)
        assert r.returncode == 2
        assert f"{tmp_path / name}: not a regular file (a pipe, socket or device?)" in r.stderr


def test_git_lfs_pointer(cli, tmp_path):
    p = tmp_path / "adapter_model.safetensors"
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "4d" * 32 + "\nsize 2048\n")
    expect_error(cli, p, "a git-lfs pointer file, not the tensor data", "git lfs pull")


@pytest.mark.parametrize(
    "page",
    [
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n",
        "\n  <html><body>Repository not found</body></html>",
        "\ufeff<!doctype html><html></html>",
    ],
)
def test_html_error_page(cli, tmp_path, page):
    p = tmp_path / "bank.safetensors"
    p.write_text(page, encoding="utf-8")
    expect_error(cli, p, "an HTML page, not tensor data")


def test_json_text_saved_as_safetensors(cli, tmp_path):
    p = tmp_path / "bank.safetensors"
    p.write_text('{"error": "Repository Not Found"}')
    expect_error(cli, p, "a JSON text file, not a safetensors file")


def test_pickles_renamed_to_safetensors(cli, tmp_path):
    t = {"prompt_embeddings": torch.randn(4, 6)}
    torch.save(t, tmp_path / "zip.safetensors")
    expect_error(cli, tmp_path / "zip.safetensors", "a PyTorch checkpoint (zip) under a .safetensors name")
    torch.save(t, tmp_path / "legacy.safetensors", _use_new_zipfile_serialization=False)
    expect_error(cli, tmp_path / "legacy.safetensors", "a Python pickle under a .safetensors name")
    with open(tmp_path / "plain.safetensors", "wb") as f:
        pickle.dump({"a": 1}, f, protocol=2)
    expect_error(cli, tmp_path / "plain.safetensors", "a Python pickle under a .safetensors name")


def test_safetensors_renamed_to_bin(cli, tmp_path, real_bank):
    (tmp_path / "b.bin").write_bytes(real_bank)
    expect_error(cli, tmp_path / "b.bin", "a safetensors file under a pickle name")


@pytest.mark.parametrize(
    "header, words",
    [
        (b"{not json at all}", ["the header is not valid JSON"]),
        (b'{"a": 1,}', ["the header is not valid JSON"]),
        (b"\xff\xfe{}", ["the header is not valid UTF-8"]),
        (b"[1, 2, 3]", ["the header must be a JSON object, found a JSON list"]),
        (b'{"__metadata__": [1]}', ["__metadata__ must be a JSON object of strings"]),
        (b"{", ["the header is 1 bytes long"]),
        (b'{"x": ' + b"[" * 100000 + b"]" * 100000 + b"}", ["nested too deeply"]),
        (b'{"x": {"dtype": "F32", "shape": [1' + b"0" * 5000 + b'], "data_offsets": [0, 4]}}', ["not valid JSON"]),
        (b'{"__metadata__": {"k": "\\ud800"}}', ["lone UTF-16 surrogate"]),
    ],
)
def test_header_not_json(cli, tmp_path, header, words):
    p = raw_safetensors(tmp_path / "h.safetensors", header)
    expect_error(cli, p, *words)


def test_header_length_field_lies(cli, tmp_path, real_bank):
    p = tmp_path / "big.safetensors"
    p.write_bytes(struct.pack("<Q", 10**12) + real_bank[8:])
    expect_error(cli, p, f"the header length field says {10**12} bytes, more than safetensors allows")


def test_offsets_past_the_end_and_other_layout_problems(cli, tmp_path, real_bank):
    header, data = header_of(_write(tmp_path / "orig.safetensors", real_bank))
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])

    def variant(name, change):
        h = json.loads(json.dumps(header))
        change(h)
        return raw_safetensors(tmp_path / name, h, data)

    b, e = header[last]["data_offsets"]
    p = variant("past.safetensors", lambda h: h[last].update(data_offsets=[b + 64, e + 64]))
    expect_error(
        cli,
        p,
        f"tensor '{last}': data ends at byte {e + 64} of the data section "
        f"but the file holds only {len(data)} data bytes",
    )
    p = variant("size.safetensors", lambda h: h[last].update(data_offsets=[b, e - 4]))
    expect_error(
        cli,
        p,
        f"tensor '{last}': data_offsets [{b}, {e - 4}] hold {e - 4 - b} bytes "
        f"but F32{header[last]['shape']} needs {e - b}",
    )
    p = variant("neg.safetensors", lambda h: h[last].update(data_offsets=[-4, e - b - 4]))
    expect_error(cli, p, "are not an increasing byte range")
    p = variant("overlap.safetensors", lambda h: h[last].update(data_offsets=[b - 8, e - 8]))
    expect_error(cli, p, "overlap")
    p = variant("dtype.safetensors", lambda h: h[last].update(dtype="F33"))
    expect_error(cli, p, f"tensor '{last}': unknown dtype \"F33\"")
    p = variant("dtype2.safetensors", lambda h: h[last].update(dtype=["F32"]))
    expect_error(cli, p, 'unknown dtype ["F32"]')
    p = variant("shape.safetensors", lambda h: h[last].update(shape=[-1, 2]))
    expect_error(cli, p, "shape must be a list of non-negative integers, found [-1, 2]")
    p = variant("dims.safetensors", lambda h: h[last].update(shape=[1] * 50000))
    lines = expect_error(cli, p, "shape has 50000 dimensions")
    assert max(map(len, lines)) < 400
    p = variant("offs.safetensors", lambda h: h[last].update(data_offsets="0-4"))
    expect_error(cli, p, 'data_offsets must be two integers [begin, end], found "0-4"')
    p = variant("entry.safetensors", lambda h: h.update(x=[1, 2]))
    expect_error(cli, p, "tensor 'x': expected an object with dtype, shape and data_offsets")
    # safetensors refuses bytes that no tensor covers; so does mptkit
    p = raw_safetensors(tmp_path / "tail.safetensors", header, data + b"\0" * 16)
    expect_error(cli, p, "the file has 16 bytes after the last tensor's data")
    first = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    h = json.loads(json.dumps(header))
    for k in h:
        if k != "__metadata__":
            h[k]["data_offsets"] = [o + 8 for o in h[k]["data_offsets"]]
    p = raw_safetensors(tmp_path / "gap.safetensors", h, b"\0" * 8 + data)
    expect_error(cli, p, f"tensor '{first}' starts at byte 8 of the data section but the data before it ends at byte 0")
    from safetensors import SafetensorError, safe_open

    for bad in ("tail.safetensors", "gap.safetensors"):
        with pytest.raises(SafetensorError, match="(?i)invalid|offset|metadata"):
            safe_open(str(tmp_path / bad), "pt")


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_many_bad_entries_are_listed_but_capped(cli, tmp_path):
    header = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]} for i in range(500)}
    p = raw_safetensors(tmp_path / "many.safetensors", header, b"\0" * 8)
    lines = expect_error(
        cli,
        p,
        "tensor 't0': data_offsets [0, 8] hold 8 bytes but F32[1] needs 4",
        "... and 480 more problems like these",
    )
    assert len(lines) == 21


@pytest.mark.parametrize(
    "shapes, words",
    [
        (((6, 8), (4, 5, 2), (4, 2, 8)), ["prompt length N differs", "N=6", "N=5"]),
        (((6, 8), (4, 6, 2), (4, 3, 8)), ["rank r differs"]),
        (((6, 8), (4, 6, 2), (4, 2, 9)), ["hidden size d differs", "d=8", "d=9"]),
        (((6, 8), (4, 6, 2), (3, 2, 8)), ["task count T differs"]),
        (((6, 8, 1), (4, 6, 2), (4, 2, 8)), ["prompt_embeddings.shape: expected 2 dimensions, found 3"]),
        (((6, 8), (4, 6), (4, 2, 8)), ["prefix_task_cols.shape: expected 3 dimensions, found 2"]),
        (((6, 8), (4, 6, 2), (2, 8)), ["prefix_task_rows.shape: expected 3 dimensions, found 2"]),
        (((6, 8), (4, 6, 0), (4, 0, 8)), ["prefix_task_cols.shape[2]: expected a number >= 1, found 0"]),
    ],
)
def test_wrong_shaped_tensor(cli, tmp_path, shapes, words):
    pe, cols, rows = (torch.randn(*s) for s in shapes)
    p = write_bank(tmp_path / "w.safetensors", pe, cols, rows)
    expect_error(cli, p, *words)


def test_wrong_dtype(cli, tmp_path):
    p = write_bank(tmp_path / "i.safetensors", torch.randn(6, 8), torch.randn(4, 6, 2), torch.randint(0, 5, (4, 2, 8)))
    expect_error(cli, p, 'prefix_task_rows.dtype: expected one of "F32", "BF16", "F16", "F64", found "I64"')
    p = write_bank(tmp_path / "m.safetensors", torch.randn(6, 8).half(), torch.randn(4, 6, 2), torch.randn(4, 2, 8))
    expect_error(cli, p, "tensors have different dtypes", "prompt_embeddings F16")


@pytest.mark.parametrize("missing", ["prefix_task_cols", "prefix_task_rows"])
def test_missing_key(cli, tmp_path, missing):
    t = {
        "prompt_embeddings": torch.randn(6, 8),
        "prefix_task_cols": torch.randn(4, 6, 2),
        "prefix_task_rows": torch.randn(4, 2, 8),
    }
    del t[missing]
    save_file(t, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    lines = expect_error(cli, tmp_path / "m.safetensors", f"tensor '{missing}' is missing")
    assert len(lines) == 1


def test_missing_prompt_embeddings_in_an_adapter_folder(cli, tmp_path, peft_banks):
    folder = tmp_path / "f"
    shutil.copytree(peft_banks("causal", "float32", True), folder)
    t = read_tensors(folder)
    del t["prompt_embeddings"]
    save_file(t, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    expect_error(cli, folder, "adapter_model.safetensors: tensor 'prompt_embeddings' is missing")


def test_extra_key(cli, tmp_path):
    t = {
        "prompt_embeddings": torch.randn(6, 8),
        "prefix_task_cols": torch.randn(4, 6, 2),
        "prefix_task_rows": torch.randn(4, 2, 8),
        "lora_A": torch.randn(2, 2),
    }
    save_file(t, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
    expect_error(
        cli,
        tmp_path / "x.safetensors",
        "unexpected tensor 'lora_A'",
        "expected only prefix_task_cols, prefix_task_rows, prompt_embeddings",
    )


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("num_tasks", 7, ["field num_tasks is 7 but prefix_task_cols [3, 10, 2] has T=3"]),
        ("num_ranks", 1, ["field num_ranks is 1 but prefix_task_cols [3, 10, 2] has r=2"]),
        ("token_dim", 32, ["field token_dim is 32 but prompt_embeddings [10, 24] has d=24"]),
        (
            "num_virtual_tokens",
            4,
            ["num_virtual_tokens x num_transformer_submodules = 4 x 2 = 8 but prompt_embeddings [10, 24] has N=10"],
        ),
        ("num_transformer_submodules", 1, ["= 5 x 1 = 5 but prompt_embeddings [10, 24] has N=10"]),
        ("num_tasks", "3", ["field 'num_tasks': expected integer, found \"3\""]),
        ("peft_type", "LORA", ['field peft_type: expected "MULTITASK_PROMPT_TUNING", found "LORA"']),
    ],
)
def test_inconsistent_config(cli, tmp_path, peft_banks, field, value, words):
    folder = tmp_path / "f"
    shutil.copytree(peft_banks("seq2seq", "float32", True), folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg[field] = value
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    lines = expect_error(cli, folder, *words)
    assert all(ln.startswith(f"mptkit: error: {folder / 'adapter_config.json'}: ") for ln in lines)


def test_inconsistent_config_hints_in_a_bare_file(cli, tmp_path):
    p = write_bank(
        tmp_path / "h.safetensors",
        torch.randn(6, 8),
        torch.randn(4, 6, 2),
        torch.randn(4, 2, 8),
        extra_meta={"mptkit.config": json.dumps({"task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": 4})},
    )
    expect_error(
        cli, p, f"{p}: __metadata__ key 'mptkit.config': num_virtual_tokens x num_transformer_submodules = 4 x 2 = 8"
    )


@pytest.mark.parametrize(
    "text, words",
    [
        ("{", ["adapter_config.json: not valid JSON"]),
        ("[1]", ["adapter_config.json: value: expected object"]),
        (b"\xff\xfe", ["not UTF-8 text"]),
    ],
)
def test_unreadable_config(cli, tmp_path, peft_banks, text, words):
    folder = tmp_path / "f"
    shutil.copytree(peft_banks("causal", "float32", True), folder)
    (folder / "adapter_config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    expect_error(cli, folder, *words)


def test_non_string_metadata_value(cli, tmp_path, real_bank):
    header, data = header_of(_write(tmp_path / "o.safetensors", real_bank))
    header["__metadata__"] = {"format": "pt", "epoch": 5, "good": "x"}
    p = raw_safetensors(tmp_path / "meta.safetensors", header, data)
    lines = expect_error(cli, p, "__metadata__ key 'epoch': expected string, found 5")
    assert len(lines) == 1


@pytest.mark.parametrize(
    "names, words",
    [
        ("[sst2, mnli]", ["__metadata__ key 'mptkit.task_names' must hold JSON text"]),
        (json.dumps(["a", "b"]), ["__metadata__ key 'mptkit.task_names' lists 2 names but the bank has T=4 tasks"]),
        (json.dumps(["a", "b", "a", "c"]), ['found "a" more than once']),
        (json.dumps(["a", "b,c", "d", "7"]), ['item 1: "b,c" is not allowed', 'item 3: "7" is not allowed']),
        (json.dumps({"0": "a"}), ["expected array"]),
    ],
)
def test_invalid_task_names_metadata(cli, tmp_path, names, words):
    p = write_bank(
        tmp_path / "n.safetensors",
        torch.randn(6, 8),
        torch.randn(4, 6, 2),
        torch.randn(4, 2, 8),
        extra_meta={"mptkit.task_names": names},
    )
    expect_error(cli, p, "mptkit.task_names", *words)


# -- malicious pickles -------------------------------------------------------------------------------
class _Evil:
    marker = None

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_files(tmp_path: Path, marker: Path) -> list[Path]:
    _Evil.marker = marker
    payload = {"prompt_embeddings": _Evil(), "prefix_task_cols": torch.zeros(1, 2, 1)}
    out = []
    torch.save(payload, tmp_path / "zip.bin")
    torch.save(payload, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with open(tmp_path / "plain.pth", "wb") as f:
        pickle.dump(payload, f, protocol=2)
    with open(tmp_path / "plain4.bin", "wb") as f:
        pickle.dump(payload, f, protocol=4)
    out += [tmp_path / n for n in ("zip.bin", "legacy.pt", "plain.pth", "plain4.bin")]
    return out


def test_malicious_pickle_never_runs(cli, tmp_path, peft_banks):
    marker = tmp_path / "MARKER"
    files = _evil_files(tmp_path, marker)
    # the payload works: unpickling it without weights_only would create the marker
    with open(tmp_path / "plain.pth", "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    for f in files:
        lines = expect_error(cli, f, "refused", "mptkit loads weights only and never runs code from a file")
        assert len(lines) == 1
    for f in files[:2]:  # the GLOBAL that would run is named
        assert "posix.system" in cli("validate", f).stderr
    for f in files[:2]:  # inside adapter folders as adapter_model.bin
        folder = tmp_path / f"folder-{f.stem}"
        shutil.copytree(peft_banks("causal", "float32", False), folder)
        shutil.copy(f, folder / "adapter_model.bin")
        expect_error(cli, folder, "adapter_model.bin: refused")
        from mptkit import load
        from mptkit.errors import UnsafeFile

        with pytest.raises(UnsafeFile, match="adapter_model.bin: refused"):
            load(folder)
    r = run_mptkit("validate", *files, tmp_path / "folder-zip")  # and in a separate process
    assert r.returncode == 2 and r.stderr.count("refused") == 5
    assert not marker.exists()


# -- several problems, several paths -------------------------------------------------------------------
def test_validate_lists_every_problem(cli, tmp_path, peft_banks):
    p = write_bank(
        tmp_path / "bad.safetensors",
        torch.randn(6, 8),
        torch.randn(4, 5, 2),
        torch.randn(3, 2, 9),
        extra_meta={"mptkit.task_names": "nope", "epoch": "3"},
    )
    header, data = header_of(p)
    header["__metadata__"]["epoch"] = 3
    raw_safetensors(p, header, data)
    lines = expect_error(
        cli,
        p,
        "task count T differs",
        "prompt length N differs",
        "hidden size d differs",
        "__metadata__ key 'epoch': expected string, found 3",
    )
    assert len(lines) == 4
    folder = tmp_path / "folder"
    shutil.copytree(peft_banks("seq2seq", "float32", True), folder)
    t = read_tensors(folder)
    t["prefix_task_rows"] = torch.randn(3, 2, 7)
    save_file(t, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(num_tasks=5, num_ranks=3)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    lines = expect_error(cli, folder, "hidden size d differs", "field num_tasks is 5", "field num_ranks is 3")
    assert len(lines) == 3
    rep = json.loads(cli("validate", "--json", folder).stdout)
    assert rep == {
        "path": str(folder),
        "valid": False,
        "problems": [ln.removeprefix("mptkit: error: ") for ln in lines],
    }


def test_validate_several_paths_mixed(cli, tmp_path, peft_banks, example_bank):
    good1 = peft_banks("causal", "bfloat16", False)
    good2 = random_bank(tmp_path / "good.safetensors")
    bad1 = tmp_path / "empty.safetensors"
    bad1.write_bytes(b"")
    bad2 = tmp_path / "missing-folder"
    r = cli("validate", good1, bad1, example_bank, bad2, good2)
    assert r.exit_code == 2
    assert r.stdout.splitlines() == [
        f"{good1}: valid (bank)",
        f"{example_bank}: valid (bank)",
        f"{good2}: valid (bank)",
    ]
    assert [x for x in r.stderr.splitlines() if not x.startswith("mptkit: warning: engines")] == [
        f"mptkit: error: {bad1}: the file is empty (0 bytes); expected a safetensors file",
        f"mptkit: error: {bad2}: no such file or folder",
    ]
    assert r.stderr.count("mptkit: warning: engines") == 2  # the two adapter folders
    reps = json.loads(cli("validate", "--json", good1, bad1, example_bank, bad2, good2).stdout)
    assert [x["valid"] for x in reps] == [True, False, True, False, True]
    assert cli("validate", good1, good2, example_bank).exit_code == 0
    r = cli("validate")
    assert r.exit_code == 2 and "Missing argument" in r.stderr


# -- imports ---------------------------------------------------------------------------------------------
def test_inspect_and_validate_do_not_import_torch_or_the_hub(tmp_path, example_bank):
    bare = tmp_path / "bare.safetensors"
    shutil.copy(example_bank / "adapter_model.safetensors", bare)
    for args in (
        ["inspect", example_bank],
        ["inspect", "--json", bare],
        ["validate", example_bank, bare],
        ["validate", "--json", bare],
        ["inspect", tmp_path / "missing.safetensors"],
    ):
        _, mods = loaded_modules(*args)
        assert not mods & {"torch", "numpy", "huggingface_hub", "transformers", "peft"}, (args, mods)
    # ... and the probe does see numpy when a command reads values (numpy, never torch: 0.05 s against 1-2 s)
    mods = loaded_modules("inspect", "--values", bare)[1]
    assert "numpy" in mods and "torch" not in mods, mods


def test_python_m_mptkit_exit_codes(example_bank, tmp_path):
    r = run_mptkit("inspect", example_bank)
    assert r.returncode == 0 and "prompt length N  12 = 6 virtual tokens x 2 submodules, SEQ_2_SEQ_LM" in r.stdout
    (tmp_path / "e.safetensors").write_bytes(b"")
    r = run_mptkit("inspect", tmp_path / "e.safetensors")
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr
        == f"mptkit: error: {tmp_path / 'e.safetensors'}: the file is empty (0 bytes); expected a safetensors file\n"
    )
