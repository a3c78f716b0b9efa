"""Nothing runs from a file.

Malicious pickles whose unpickling would run a shell command (``os.system("touch MARKER")``) or
Python code (``exec``/``eval``), plainly or by tricks: nested in containers and next to real
tensors, through ``getattr(__import__("os"), "system")``, in every pickle protocol (text GLOBAL,
binary GLOBAL, STACK_GLOBAL), in a torch.save zip checkpoint (made by torch.save and hand-made),
in torch's legacy format, as ``adapter_model.bin`` of an adapter folder, under a .safetensors
name, and named as a PEFT init file by adapter_config.json. Every reader (``mptkit.load``, the
pickle reader, ``TaskPrompts.from_bank``, ``validate``) and every CLI command that reads a bank,
under every input flag (SRC, merge's later banks, ``add --from``, ``--values``, ``--plot``), refuses
them with one clear sentence (exit 2) and the marker file never appears.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import mptkit
from tests.support.banks import random_bank, save_peft_bank
from tests.support.commands import FILE_SUFFIX, writing_commands

MARKERS: list[Path] = []


def _op_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


class _Shell:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def _getattr_chain(cmd: str) -> bytes:
    """Raw protocol-2 opcodes: {"prompt_embeddings": getattr(__import__("os"), "system")(cmd)}."""
    evil = (
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n("
        + _op_str("os")
        + b"tR"
        + _op_str("system")
        + b"tR"
        + b"("
        + _op_str(cmd)
        + b"tR"
    )
    return b"\x80\x02}" + _op_str("prompt_embeddings") + evil + b"s."


def _text_pickle(cmd: str) -> bytes:
    """Protocol 0 (text): cos\\nsystem\\n (no binary header at all)."""
    return b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR."


def _hand_made_zip(real: Path, payload: bytes, out: Path) -> Path:
    """A real torch.save zip whose data.pkl is replaced by ``payload``."""
    with zipfile.ZipFile(real) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = payload if item.filename.endswith("/data.pkl") else zin.read(item.filename)
            zout.writestr(item, data)
    return out


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    """``{label: path}`` of malicious files and folders; each one's payload would create its own
    marker file."""
    root = tmp_path_factory.mktemp("evil")
    marks = root / "markers"
    marks.mkdir()
    good_tensors = {
        "prompt_embeddings": torch.randn(6, 8),
        "prefix_task_cols": torch.randn(3, 6, 2),
        "prefix_task_rows": torch.randn(3, 2, 8),
    }
    real_zip = root / "real.bin"
    torch.save(good_tensors, real_zip)
    out: dict[str, Path] = {}

    def marker(label):
        m = marks / label
        MARKERS.append(m)
        return m

    def shell(label):
        return _Shell(f"touch {marker(label)}")

    def py(label, kind=_Exec):
        m = marker(label)
        return kind(f"open({str(m)!r}, 'w').close()") if kind is _Exec else kind(f"open({str(m)!r}, 'w')")

    def put(label, data: bytes, suffix=".bin"):
        p = root / f"{label}{suffix}"
        p.write_bytes(data)
        out[label] = p

    for proto in (2, 4, 5):
        put(f"plain-p{proto}", pickle.dumps({"prompt_embeddings": shell(f"plain-p{proto}")}, protocol=proto))
    put("exec", pickle.dumps({"prompt_embeddings": py("exec")}, protocol=2))
    put("eval", pickle.dumps({"prompt_embeddings": py("eval", _Eval)}, protocol=2))
    put(
        "nested-containers",
        pickle.dumps(OrderedDict(prompt_embeddings=[{"a": (1, [shell("nested-containers")])}]), protocol=2),
    )
    put("as-dict-key", pickle.dumps({(shell("as-dict-key"),): 1}, protocol=2))
    put("getattr-chain", _getattr_chain(f"touch {marker('getattr-chain')}"))
    put("text-protocol-0", _text_pickle(f"touch {marker('text-protocol-0')}"), suffix=".pt")
    # torch.save zips: made by torch itself, beside real tensors, and hand-made around opcodes
    buf = io.BytesIO()
    torch.save({**good_tensors, "extra": shell("torch-save-zip")}, buf)
    put("torch-save-zip", buf.getvalue(), suffix=".pt")
    buf = io.BytesIO()
    torch.save(
        {"prompt_embeddings": good_tensors["prompt_embeddings"], "nested": [OrderedDict(x=shell("torch-zip-nested"))]},
        buf,
    )
    put("torch-zip-nested", buf.getvalue(), suffix=".pth")
    out["zip-getattr-chain"] = _hand_made_zip(
        real_zip, _getattr_chain(f"touch {marker('zip-getattr-chain')}"), root / "zip-getattr-chain.bin"
    )
    buf = io.BytesIO()
    torch.save({**good_tensors, "x": shell("torch-legacy")}, buf, _use_new_zipfile_serialization=False)
    put("torch-legacy", buf.getvalue())
    # under a .safetensors name
    put(
        "pickle-named-safetensors",
        pickle.dumps({"prompt_embeddings": shell("pickle-named-safetensors")}, protocol=2),
        suffix=".safetensors",
    )
    # adapter_model.bin of an otherwise real PEFT adapter folder
    folder = save_peft_bank(root / "adapter-bin", "causal", safe=False)
    buf = io.BytesIO()
    torch.save(
        {
            **dict(torch.load(folder / "adapter_model.bin", weights_only=True).items()),
            "evil": shell("adapter-bin"),
        },
        buf,
    )
    (folder / "adapter_model.bin").write_bytes(buf.getvalue())
    out["adapter-bin"] = folder
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    return save_peft_bank(root / "ok", "causal", num_tasks=3)


@pytest.fixture(autouse=True)
def no_marker_ever():
    yield
    made = [m.name for m in MARKERS if m.exists()]
    assert not made, f"code from a file ran: {made}"


def _refused(msg: str, label: str) -> None:
    assert msg and "\n" not in msg.strip() and "Traceback" not in msg, (label, msg)


READERS = {
    "mptkit.load": lambda p: mptkit.load(p),
    "formats.pickle.read": lambda p: __import__("mptkit.formats._pickle", fromlist=["read"]).read(
        str(p / "adapter_model.bin" if Path(p).is_dir() else p)
    ),
    "TaskPrompts.from_bank": lambda p: __import__(
        "mptkit.serve._runtime", fromlist=["TaskPrompts"]
    ).TaskPrompts.from_bank(p),
    "info.validate --values": lambda p: _raise_invalid(
        __import__("mptkit._io", fromlist=["validate"]).validate(p, values=True)
    ),
}


def _raise_invalid(report):
    if not report["valid"]:
        raise mptkit.MptkitError(report["problems"][0])
    return report


@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_refuses_without_running_code(evil, reader):
    for label, path in evil.items():
        with pytest.raises(
            mptkit.MptkitError, match=r"refused|pickle under a \.safetensors name|not a (readable )?PyTorch checkpoint"
        ) as e:
            READERS[reader](path)
        _refused(e.value.message, label)


def _invocations(src: str, good: str, tmp: Path) -> dict[str, list[str]]:
    """Every command and flag that reads a bank, with ``src`` in the reading position."""
    inv = {
        "validate": ["validate", src],
        "validate --values --json": ["validate", "--values", "--json", src],
        "validate good+evil": ["validate", good, src],
        "inspect": ["inspect", src],
        "inspect --values --json": ["inspect", "--values", "--json", src],
        "similarity": ["similarity", src],
    }
    for label, (kind, _) in writing_commands(src, "o").items():
        inv[label] = writing_commands(src, tmp / ("o" + FILE_SUFFIX.get(kind, "")))[label][1]
    inv["merge as second bank"] = ["merge", good, src, "-o", str(tmp / "m")]
    inv["merge as third bank"] = ["merge", good, good, src, "--rename-duplicates", "-o", str(tmp / "m3")]
    inv["add --from"] = ["add", good, "--name", "x", "--from", f"{src}:0", "-o", str(tmp / "a")]
    return inv


def test_every_command_refuses_without_running_code(cli, evil, good, tmp_path):
    ran = 0
    for label, path in evil.items():
        for what, argv in _invocations(str(path), str(good), tmp_path / label).items():
            r = cli(*argv)
            assert r.exit_code == 2, (label, what, r.exit_code, r.output)
            if what.startswith("validate --values --json"):  # the report on stdout lists the problem
                assert json.loads(r.stdout)["valid"] is False
            elif "--json" in argv:  # errors are JSON on stdout
                assert json.loads(r.stdout)["error"], (label, what, r.stdout)
            else:  # (a good adapter folder beside the file says first that engines would serve its shared prompt)
                said = [x for x in r.stderr.splitlines() if not x.startswith("mptkit: warning: engines that load")]
                assert said and said[0].startswith("mptkit: error: "), (label, what, r.stderr)
            assert "Traceback" not in r.stderr, (label, what, r.stderr)
            assert not (tmp_path / label).exists() or not any((tmp_path / label).iterdir())
            ran += 1
    assert ran >= len(evil) * 15
    print(f"\n{ran} command runs on {len(evil)} malicious files: every one refused, no marker created")


def test_unsafe_pickles_are_named_as_such(evil):
    """The refusal says why: objects other than tensors (not a vague 'corrupt')."""
    for label in (
        "plain-p2",
        "plain-p4",
        "exec",
        "getattr-chain",
        "torch-save-zip",
        "zip-getattr-chain",
        "adapter-bin",
    ):
        with pytest.raises(mptkit.errors.UnsafeFile, match="never runs code"):
            mptkit.load(evil[label])


def test_init_path_in_adapter_config_is_never_followed(cli, evil, good, tmp_path):
    """A config naming an init state dict (PEFT's EXACT_SOURCE_TASK etc.) pointing at a malicious
    pickle: every command succeeds on the bank's own weights and never opens the init file (no
    marker appears), and every adapter folder it writes says RANDOM with no init path."""
    folder = tmp_path / "init-evil"
    shutil.copytree(good, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(
        prompt_tuning_init="EXACT_SOURCE_TASK",
        prompt_tuning_init_state_dict_path=str(evil["plain-p2"]),
        prompt_tuning_init_task=0,
    )
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    folders_written = 0
    for label, (kind, _) in writing_commands(folder, "OUT").items():
        out = tmp_path / "out" / (label + FILE_SUFFIX.get(kind, ""))  # one output per command
        r = cli(*writing_commands(folder, out)[label][1])
        assert r.exit_code == 0, (label, r.output)
        written = out / "adapter_config.json"
        assert out.exists(), label
        if written.exists():
            w = json.loads(written.read_text())
            assert w["prompt_tuning_init"] == "RANDOM" and w.get("prompt_tuning_init_state_dict_path") is None, label
            folders_written += 1
    files = sum(kind in FILE_SUFFIX for kind, _ in writing_commands(folder, "OUT").values())
    stores = sum(argv[-3:-2] == ["tgis"] for _, argv in writing_commands(folder, "OUT").values())  # no adapter config
    assert folders_written >= len(writing_commands(folder, "OUT")) - files - stores  # all but files and stores
    for argv in (["validate", folder], ["inspect", folder], ["similarity", folder]):
        assert cli(*argv).exit_code == 0, argv
    assert mptkit.load(folder).num_tasks == 3


def test_marker_mechanism_works(tmp_path):
    """The payloads really run when unpickled unsafely: the test would notice an unsafe reader."""
    m = tmp_path / "ran"
    pickle.loads(_getattr_chain(f"touch {m}"))
    assert m.exists()
    m.unlink()
    pickle.loads(pickle.dumps(_Exec(f"open({str(m)!r}, 'w').close()")))
    assert m.exists()


def test_safe_pickles_still_load(tmp_path):
    """Plain tensor pickles (zip and legacy) are read: the refusals above are not a blanket no."""
    src = random_bank(tmp_path / "b.safetensors", T=2)
    from tests.support.banks import load_tensors

    t = load_tensors(src)
    torch.save(t, tmp_path / "zip.pt")
    torch.save(t, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for p in ("zip.pt", "legacy.pt"):
        assert mptkit.load(tmp_path / p).num_tasks == 2
