"""Hub faults, against the loopback server of tests/fakehub.

While the bank's files download (``pull``, and any command reading an ``hf://`` reference) the
server truncates bodies, announces a wrong Content-Length, sends garbage, answers 500/503 or drops
the connection; while a bank uploads (``push``) it fails the same ways. Each time: one clear
sentence, exit 2, no output written, the local input unchanged, the remote repo unchanged; and no
poisoned cache: a later pull (online, and offline from the cache) yields exactly the served bytes.
Names with ``..`` in a listing are refused by every command. (tests/hub/test_transfers.py covers faults on the
repo lookup and pull's own messages.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.commands import one_error
from tests.support.files import TMP_MARK, sha256_tree

DOWNLOAD_FAULTS = [
    ("truncate", {"keep": 100}),
    ("truncate", {"keep": 0}),
    ("content_length", {"delta": 10}),
    ("content_length", {"delta": -10}),
    ("garbage", {}),
    ("garbage", {"body": b'{"error": "not the file"}'}),
    ("status", {"code": 500}),
    ("status", {"code": 503}),
    ("drop", {}),
]
FAULT_IDS = [f"{k}-{'-'.join(str(v)[:8] for v in o.values()) or 'x'}" for k, o in DOWNLOAD_FAULTS]


class _NoSleep:
    """The ``time`` module without its pauses (the client's retries only cost time here)."""

    def __getattr__(self, name):
        import time

        return (lambda s: None) if name == "sleep" else getattr(time, name)


@pytest.fixture(autouse=True)
def no_retry_pauses(monkeypatch):
    import huggingface_hub.file_download as fd
    import huggingface_hub.utils._http as http

    import mptkit.hub._http as mhttp

    monkeypatch.setattr(fd, "time", _NoSleep())
    monkeypatch.setattr(http, "time", _NoSleep())
    monkeypatch.setattr(mhttp, "pause", lambda s: None)


@pytest.fixture
def served(hub, cli, peft_banks):
    """owner/bank on the server (pushed by mptkit); ``{name: bytes}`` as served."""
    r = cli("push", peft_banks("seq2seq"), "owner/bank")
    assert r.exit_code == 0, r.output
    hub.clear()
    return hub.files("owner/bank")


def _one_error(r) -> str:
    return one_error(r)


def _bank_files(folder: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.name in ("adapter_config.json", "adapter_model.safetensors")
    }


def _bank_part(files: dict) -> dict:
    return {k: files.get(k) for k in ("adapter_config.json", "adapter_model.safetensors")}


def _no_temps(root: Path) -> bool:
    return not [p for p in root.rglob("*") if TMP_MARK in p.name]


def _reading_commands(out_dir: Path) -> dict[str, list[str]]:
    ref = "hf://owner/bank"
    return {
        "pull -o": ["pull", "owner/bank", "-o", str(out_dir / "pulled")],
        "derive hf://": ["derive", ref, "--mode", "exact", "--task", "0", "-o", str(out_dir / "d.safetensors")],
        "slice hf://": ["slice", ref, "--tasks", "0", "-o", str(out_dir / "s")],
        "validate hf://": ["validate", ref],
    }


@pytest.mark.parametrize("kind,options", DOWNLOAD_FAULTS, ids=FAULT_IDS)
def test_download_faults_leave_no_output_and_no_poisoned_cache(hub, cli, served, tmp_path, monkeypatch, kind, options):
    """Every answer for the weights is faulty (a resumed download is truncated again, and the
    client gives up after its retries): every reading command fails with one sentence naming the
    repo, writes nothing and caches nothing; afterwards, offline there is nothing to serve and
    online every command gets the served bytes."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for what, argv in _reading_commands(out_dir).items():
        hub.fault(kind, path=r"/resolve/.*adapter_model\.safetensors$", method="GET", times=None, **options)
        r = cli(*argv)
        hub.clear()
        assert _no_temps(tmp_path), what
        assert r.exit_code == 2, (what, r.output)
        assert "owner/bank" in _one_error(r), what
        assert sorted(os.listdir(out_dir)) == [], what
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = cli("pull", "owner/bank", "-o", out_dir / "offline")
    assert r.exit_code == 2 and "offline" in _one_error(r).lower() and not (out_dir / "offline").exists(), r.output
    monkeypatch.delenv("HF_HUB_OFFLINE")
    _all_commands_get_the_served_bytes(cli, served, tmp_path / "again")


def _all_commands_get_the_served_bytes(cli, served, out_dir: Path) -> None:
    out_dir.mkdir()
    for what, argv in _reading_commands(out_dir).items():
        r = cli(*argv)
        assert r.exit_code == 0, (what, r.output)
    want = {k: served[k] for k in ("adapter_config.json", "adapter_model.safetensors")}
    assert _bank_files(out_dir / "pulled") == want


@pytest.mark.parametrize("keep", [0, 100])
def test_a_download_cut_once_is_resumed_to_the_right_bytes(hub, cli, served, tmp_path, monkeypatch, keep):
    """The first answer for the weights is cut after ``keep`` bytes, the next ones are whole: the
    pull resumes and gets exactly the served bytes, and the cache then serves them offline."""
    hub.fault("truncate", path=r"/resolve/.*adapter_model\.safetensors$", method="GET", times=1, keep=keep)
    r = cli("pull", "owner/bank", "-o", tmp_path / "pulled")
    assert r.exit_code == 0, r.output
    want = {k: served[k] for k in ("adapter_config.json", "adapter_model.safetensors")}
    assert _bank_files(tmp_path / "pulled") == want and _no_temps(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = cli("pull", "owner/bank", "-o", tmp_path / "offline")
    assert r.exit_code == 0, r.output
    assert _bank_files(tmp_path / "offline") == want


@pytest.mark.parametrize(
    "kind,options",
    [("status", {"code": 500}), ("garbage", {}), ("drop", {}), ("truncate", {"keep": 10})],
    ids=["500", "garbage", "drop", "truncate"],
)
def test_config_download_faults(hub, cli, served, tmp_path, kind, options):
    """The same for adapter_config.json (small, JSON: garbage there must not become a config)."""
    hub.fault(kind, path=r"/resolve/.*adapter_config\.json$", method="GET", times=None, **options)
    _one_error(cli("pull", "owner/bank", "-o", tmp_path / "o"))
    assert not (tmp_path / "o").exists() and _no_temps(tmp_path)
    hub.clear()
    assert cli("pull", "owner/bank", "-o", tmp_path / "o").exit_code == 0
    assert _bank_files(tmp_path / "o")["adapter_config.json"] == served["adapter_config.json"]


@pytest.mark.parametrize(
    "kind,options", [("status", {"code": 500}), ("garbage", {}), ("drop", {})], ids=["500", "garbage", "drop"]
)
@pytest.mark.parametrize("endpoint", ["/commit/", "/preupload/", "/api/repos/create"])
def test_push_faults_change_nothing(hub, cli, peft_banks, tmp_path, endpoint, kind, options):
    """An upload that fails leaves the remote repo as it was and the local bank unchanged."""
    src = peft_banks("causal")
    assert cli("push", peft_banks("seq2seq"), "owner/pushed").exit_code == 0
    old = _bank_part(hub.files("owner/pushed"))
    new = _bank_part({p.name: p.read_bytes() for p in src.iterdir()})
    before = sha256_tree(src)
    hub.fault(kind, path=endpoint, method="POST", times=None, **options)
    msg = _one_error(cli("push", src, "owner/pushed"))
    assert "owner/pushed" in msg
    # a commit is all or nothing; a server may still fail after committing (500/garbage on /commit/)
    assert _bank_part(hub.files("owner/pushed")) in ([old, new] if endpoint == "/commit/" and kind != "drop" else [old])
    assert sha256_tree(src) == before
    hub.clear()
    assert cli("push", src, "owner/pushed").exit_code == 0
    assert hub.files("owner/pushed")["adapter_model.safetensors"] == (src / "adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize("name", ["../evil.safetensors", "a/../../evil.safetensors", "/etc/evil.safetensors"])
def test_escaping_names_are_refused_by_every_command(hub, cli, tmp_path, name, monkeypatch):
    from tests.support.banks import random_bank

    data = random_bank(tmp_path / "b.safetensors", T=2).read_bytes()
    hub.commit("owner/evil", {name: data})
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for argv in (
        ["derive", "hf://owner/evil", "--mode", "exact", "--task", "0", "-o", "d.safetensors"],
        ["slice", "hf://owner/evil", "--tasks", "0", "-o", "s.safetensors"],
        ["merge", "hf://owner/evil", "hf://owner/evil", "-o", "m.safetensors"],
        ["validate", "hf://owner/evil"],
        ["inspect", "--values", "hf://owner/evil"],
        ["pull", "owner/evil", "-o", "p"],
    ):
        msg = _one_error(cli(*argv))
        assert "escape" in msg, (argv, msg)
    assert os.listdir(work) == [] and not (tmp_path / "deep" / "evil.safetensors").exists()
    assert not [q for q in hub.requests if "/resolve/" in q.path]


def test_a_failed_download_then_a_good_one_reads_the_right_values(hub, cli, served, tmp_path):
    """After a truncated download, the tensors read through hf:// are the served ones, value for value."""
    import mptkit
    from tests.support.banks import load_tensors

    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "adapter_model.safetensors").write_bytes(served["adapter_model.safetensors"])
    want = load_tensors(tmp_path / "ref")

    def same(bank):
        for k, a in bank.tensors.items():
            assert bytes(a.read()) == want[k].contiguous().view(-1).view(__import__("torch").uint8).numpy().tobytes()

    hub.fault("truncate", path=r"/resolve/.*adapter_model\.safetensors$", method="GET", keep=0, times=None)
    with pytest.raises(
        mptkit.MptkitError, match="download adapter_model.safetensors: the connection broke after byte 0 of"
    ):
        mptkit.load("hf://owner/bank")
    hub.clear()
    same(mptkit.load("hf://owner/bank"))
    shutil.rmtree(os.environ["HF_HOME"])
    # bodies cut after 500 bytes: each try resumes where the last one stopped, and the bytes are right
    hub.fault("truncate", path=r"/resolve/.*adapter_model\.safetensors$", method="GET", keep=500, times=None)
    same(mptkit.load("hf://owner/bank"))
    assert len([q for q in hub.requests if q.path.endswith("adapter_model.safetensors")]) > 1


def test_same_size_garbage_is_caught_and_not_cached(hub, cli, served, tmp_path):
    """Bytes of the right length but the wrong content pass a size check; mptkit compares them with
    the checksum the Hub lists, keeps nothing, and the next pull gets the real ones."""
    size = len(served["adapter_model.safetensors"])
    for body in (b"\x07" * size, served["adapter_model.safetensors"][:-1] + b"\x00"):  # junk; one byte changed
        hub.fault("garbage", path=r"/resolve/.*adapter_model\.safetensors$", method="GET", times=None, body=body)
        msg = _one_error(cli("pull", "owner/bank", "-o", tmp_path / "a"))
        assert "corrupt" in msg and "nothing was kept" in msg
        assert not list((Path(os.environ["HF_HOME"]) / "hub" / "models--owner--bank" / "blobs").glob("*.incomplete"))
        assert not (tmp_path / "a").exists()
        hub.clear()
        assert cli("pull", "owner/bank", "-o", tmp_path / "b").exit_code == 0
        assert _bank_files(tmp_path / "b") == _bank_part(served)
        import shutil

        shutil.rmtree(tmp_path / "b")
        shutil.rmtree(os.environ["HF_HOME"])  # start the next round from an empty cache


def test_a_failing_download_prints_one_sentence_in_a_real_process(hub, served, tmp_path):
    """In a real process the client's own retry log ("Error while downloading ... Trying to
    resume", once per retry) would reach stderr beside mptkit's sentence; it is held back."""
    from tests.support.commands import run_mptkit

    hub.fault("truncate", path=r"adapter_model\.safetensors$", method="GET", times=None)
    r = run_mptkit("pull", "owner/bank", "-o", tmp_path / "out", env={"HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mptkit: error: ") and "adapter_model.safetensors" in lines[0], (
        r.stderr
    )
    assert not (tmp_path / "out").exists()
