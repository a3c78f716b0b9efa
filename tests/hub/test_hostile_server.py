"""A hostile Hub: the loopback server of tests/fakehub answering as an attacker
would, one mode per attack. Each attack is now a clear one-sentence refusal (exit 2) or a correct
result; nothing is written outside the HF cache and the output; time and memory stay bounded
(peak RSS measured in a real process, with generous bounds; time is bounded by the command's own
limits, never asserted as a wall-clock figure)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fakehub import Blob, git_blob_sha1
from tests.support.banks import sparse_bank
from tests.support.measured import run_measured

TOKEN = "hf_HostileServerWantsThis42"


def _one_error(r) -> str:
    """exit 2 and one line on stderr, no traceback: the way every refusal ends."""
    code = r.exit_code if hasattr(r, "exit_code") else r.returncode
    err = r.stderr
    assert code == 2, (code, r.stdout, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("mptkit: error: "), err
    return lines[0]


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.fixture
def sandbox(hub, tmp_path, monkeypatch):
    """A working folder inside tmp_path; ``outside()`` lists what appeared under tmp_path since,
    apart from the HF cache and the outputs folder."""
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(work)
    before = _tree(tmp_path)
    allowed = (tmp_path / "hf-home" / "hub", tmp_path / "out", tmp_path / "src")

    class Box:
        out = tmp_path / "out"
        src = tmp_path / "src"  # the test's own inputs
        home = tmp_path / "hf-home"

        @staticmethod
        def outside() -> list[str]:
            return sorted(
                str(p.relative_to(tmp_path))
                for p in _tree(tmp_path) - before
                if not any(p == a or a in p.parents for a in allowed) and p != tmp_path / "hf-home"
            )

        @staticmethod
        def cache_files() -> list[str]:
            root = tmp_path / "hf-home" / "hub"
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []

    return Box


@pytest.fixture
def served(hub, example_bank):
    files = {p.name: p.read_bytes() for p in example_bank.iterdir()}
    hub.commit("owner/bank", files)
    return files


def _blob_names(box) -> set[str]:
    return {Path(p).name for p in box.cache_files() if "/blobs/" in f"/{p}"}


# -- 1. ETags that are paths ---------------------------------------------------------------------
@pytest.mark.parametrize("header", ["etag", "linked_etag"])
@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_etags_that_are_paths_never_become_paths(hub, cli, served, sandbox, tmp_path, header, where):
    target = "../../../../../escaped" if where == "relative" else str(tmp_path / "abs-escaped")
    hub.hostile("owner/bank", **{header: f'"{target}"'})
    for argv in (
        ["pull", "owner/bank"],
        ["pull", "owner/bank", "-o", sandbox.out / "p"],
        ["inspect", "hf://owner/bank"],
        ["validate", "hf://owner/bank"],
    ):
        r = cli(*argv)
        assert r.exit_code == 0, (argv, r.output)
    assert sandbox.outside() == []
    assert {p.name: p.read_bytes() for p in (sandbox.out / "p").iterdir()} == served
    # blobs are named by the checksums the listing gives, whatever the headers said
    assert _blob_names(sandbox) == {
        hashlib.sha256(served["adapter_model.safetensors"]).hexdigest(),
        git_blob_sha1(served["adapter_config.json"]),
    }
    assert not [p for p in sandbox.cache_files() if p.endswith((".lock", ".incomplete"))]


# -- 2. one flipped byte under a non-hex ETag ----------------------------------------------------
@pytest.mark.parametrize(
    "etags", [{"linked_etag": '"not-hex"'}, {"etag": '"not-hex"', "linked_etag": '"not-hex"'}], ids=["weights", "both"]
)
def test_a_flipped_byte_is_caught_whatever_the_etag(hub, cli, served, sandbox, etags):
    size = len(served["adapter_model.safetensors"])
    hub.hostile("owner/bank", **etags, flip={"adapter_model.safetensors": size - 3})
    for argv in (
        ["pull", "owner/bank", "-o", sandbox.out / "p"],
        ["pull", "owner/bank"],
        ["derive", "hf://owner/bank", "--mode", "exact", "--task", "1", "-o", sandbox.out / "d.safetensors"],
        ["validate", "hf://owner/bank"],
    ):
        msg = _one_error(cli(*argv))
        assert "adapter_model.safetensors is corrupt" in msg and "the Hub lists" in msg, (argv, msg)
    assert os.listdir(sandbox.out) == [] and sandbox.outside() == []
    assert hashlib.sha256(served["adapter_model.safetensors"]).hexdigest() not in _blob_names(sandbox)
    assert not [p for p in sandbox.cache_files() if "adapter_model" in p or "incomplete" in p]
    hub.clear()  # the honest server again: the next pull gets the real bytes
    assert cli("pull", "owner/bank", "-o", sandbox.out / "p").exit_code == 0
    assert (sandbox.out / "p" / "adapter_model.safetensors").read_bytes() == served["adapter_model.safetensors"]


def test_no_usable_checksum_is_refused_unless_the_user_opts_out(hub, cli, served, sandbox, monkeypatch):
    hub.hostile("owner/bank", checksums=False)
    msg = _one_error(cli("pull", "owner/bank", "-o", sandbox.out / "p"))
    assert "lists no usable checksum" in msg and "--allow-unverified" in msg and "MPTKIT_ALLOW_UNVERIFIED" in msg
    assert os.listdir(sandbox.out) == [] and sandbox.cache_files() == []
    r = cli("pull", "owner/bank", "-o", sandbox.out / "p", "--allow-unverified")
    assert r.exit_code == 0, r.output
    assert (sandbox.out / "p" / "adapter_model.safetensors").read_bytes() == served["adapter_model.safetensors"]
    monkeypatch.setenv("MPTKIT_ALLOW_UNVERIFIED", "1")
    assert cli("inspect", "hf://owner/bank").exit_code == 0
    assert sandbox.outside() == []


# -- 3. a slow server ----------------------------------------------------------------------------
def test_a_server_dripping_bytes_is_given_up(hub, served, sandbox):
    """One byte every 0.2 s: less than 1 kB per timeout, so no progress; each command stops at its
    no-progress timeout (1 s here) with one sentence and leaves no temp in the cache. The sentence
    proves the timeout ended it (only the no-progress timeout says "no progress"); a command that
    never ended is killed by run_measured's wall limit and fails the exit-2 check."""
    hub.hostile("owner/bank", slow=0.2)
    for argv in (["pull", "owner/bank"], ["inspect", "hf://owner/bank"]):
        r = run_measured(*argv, env={"MPTKIT_HUB_TIMEOUT": "1"}, wall_limit_s=60)
        msg = _one_error(r)
        assert "no progress" in msg and "--timeout" in msg and "MPTKIT_HUB_TIMEOUT" in msg, msg
    r = run_measured("pull", "owner/bank", "-o", sandbox.out / "p", "--timeout", "1", wall_limit_s=60)
    assert "no progress" in _one_error(r)
    assert sandbox.cache_files() == [] and os.listdir(sandbox.out) == [] and sandbox.outside() == []


def test_a_push_whose_commit_answer_drips_is_given_up(hub, cli, peft_banks):
    """The client's own requests (HfApi: create, preupload, commit) run under the same limits."""
    hub.create_repo("owner/slowpush")
    hub.hostile("owner/slowpush", slow=0.2, slow_path="/commit/")
    msg = _one_error(cli("push", peft_banks("seq2seq"), "owner/slowpush", "--timeout", "1"))
    assert "cannot commit the bank" in msg and "no progress" in msg, msg


def test_the_overall_deadline_ends_a_transfer_that_keeps_going(hub, cli, sandbox):
    """A body that keeps coming (2 kB/s, enough to count as progress) is stopped by the deadline."""
    data = sparse_bank(sandbox.src / "b.safetensors", T=64, N=16, r=1, d=64, filled=range(64))
    hub.commit("owner/slow", {"b.safetensors": (sandbox.src / "b.safetensors").read_bytes()})
    hub.hostile("owner/slow", slow=0.0005)
    assert data["size"] > 4000
    msg = _one_error(cli("pull", "owner/slow", "--deadline", "1.5", "--timeout", "30"))
    assert "longer than the deadline of 1.5 s" in msg and "--deadline" in msg
    assert sandbox.cache_files() == [] and sandbox.outside() == []
    msg = _one_error(cli("pull", "owner/slow", "--deadline", "-3"))
    assert "--deadline must be a positive number of seconds" in msg


# -- 4. memory a server cannot make us spend -----------------------------------------------------
@pytest.fixture
def big_remote(hub, tmp_path):
    """owner/big: a 300 MB sparse bank (T=18,000, N=100, d=4096), served from disk."""
    layout = sparse_bank(tmp_path / "big.safetensors", T=18_000, N=100, r=1, d=4096, filled=[0, 7])
    hub.commit("owner/big", {"big.safetensors": Blob.file(tmp_path / "big.safetensors")})
    return layout


def test_a_server_that_ignores_range_is_not_read_whole(hub, big_remote, sandbox):
    hub.hostile("owner/big", ignore_range=True)
    for argv in (
        ["inspect", "hf://owner/big"],
        ["derive", "hf://owner/big", "--mode", "exact", "--task", "7", "-o", sandbox.out / "d.safetensors"],
    ):
        before = hub.bytes_sent(r"/resolve/")
        r = run_measured(*argv)
        msg = _one_error(r)
        assert "ignored the range request" in msg and "whole file" in msg, msg
        assert r.peak_rss_mb < 250, r.peak_rss_mb  # the file is 300 MB; before: 2.3 GB for 1.2 GB
        assert hub.bytes_sent(r"/resolve/") - before < 64 << 20  # of 300 MB (socket buffers fill meanwhile)
    assert os.listdir(sandbox.out) == [] and sandbox.outside() == []


def test_a_huge_adapter_config_is_refused_before_it_is_downloaded(hub, served, sandbox):
    head = served["adapter_config.json"][:-2] + b', "padding": "'
    hub.commit("owner/bank", {"adapter_config.json": Blob.pattern(300_000_000, head, b"a", b'"}')})
    hub.clear()
    r = run_measured("inspect", "hf://owner/bank")
    msg = _one_error(r)
    assert "adapter_config.json is listed at 300,000,000 bytes" in msg and "about 1 kB" in msg
    assert r.peak_rss_mb < 250 and hub.bytes_sent(r"adapter_config\.json$") == 0
    # a listing that under-states the size: the answer's Content-Range gives it away
    hub.hostile("owner/bank", sizes={"adapter_config.json": 900})
    msg = _one_error(run_measured("pull", "owner/bank"))
    assert "Content-Range" in msg and "of 900" in msg
    assert hub.bytes_sent(r"adapter_config\.json$") <= 8 << 20
    assert sandbox.cache_files() == [] and sandbox.outside() == []


def test_a_listing_of_millions_of_files_is_refused(hub, served, sandbox):
    hub.hostile("owner/bank", listing=3_000_000)
    for argv in (["inspect", "hf://owner/bank"], ["pull", "owner/bank"]):
        r = run_measured(*argv)
        msg = _one_error(r)
        assert "answer is larger than 8,388,608 bytes" in msg and "list the repo root" in msg, msg
        assert r.peak_rss_mb < 250, r.peak_rss_mb  # before: 1.4 GB
    assert sandbox.cache_files() == [] and sandbox.outside() == []


def test_a_listing_paged_without_end_is_cut_off(hub, cli, served, monkeypatch):
    import mptkit.hub._transfer as transfer

    hub.commit("owner/bank", {f"notes/{i}.txt": b"x" for i in range(12)} | {f"n{i}.txt": b"x" for i in range(12)})
    hub.page_size = 2
    monkeypatch.setattr(transfer, "MAX_LISTING", 10)
    msg = _one_error(cli("inspect", "hf://owner/bank"))
    assert "lists more than 10 entries in the repo root" in msg
    pages = [q for q in hub.requests if "/tree/" in q.path]
    assert 5 <= len(pages) <= 6  # stopped at the cap, not at the end


# -- 7. tokens ------------------------------------------------------------------------------------
def test_a_server_echoing_the_token_never_gets_it_printed(hub, cli, served, monkeypatch, peft_banks):
    import mptkit
    from mptkit import hub as mhub

    hub.hostile("owner/bank", echo_auth=True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    for argv in (["pull", "owner/bank"], ["inspect", "hf://owner/bank"], ["push", peft_banks("seq2seq"), "owner/bank"]):
        r = cli(*argv)
        msg = _one_error(r)
        assert TOKEN not in r.output and TOKEN[3:] not in r.output and "[redacted]" in msg, msg
    # a token of any shape, given with --token: redacted too, also in the API's own message
    monkeypatch.delenv("HF_TOKEN")
    secret = "plain-secret-0123456789"
    r = cli("pull", "owner/bank", "--token", secret)
    assert secret not in r.output and "Bearer [redacted]" in _one_error(r)
    with pytest.raises(mptkit.MptkitError, match=r"\[redacted\]") as e:
        mhub.pull("owner/bank", token=secret)
    assert secret not in str(e.value)


# -- 8. control characters from a server ----------------------------------------------------------
def test_escapes_from_a_server_are_printed_escaped(hub, cli, example_bank):
    files = {p.name: p.read_bytes() for p in example_bank.iterdir()}
    cfg = json.loads(files["adapter_config.json"])
    cfg["base_model_name_or_path"] = "t5\x1b]0;owned\x07\x1b[2J\u009b31m"
    hub.commit("owner/bank", {**files, "adapter_config.json": json.dumps(cfg).encode()})
    r = cli("inspect", "hf://owner/bank")
    assert r.exit_code == 0, r.output
    assert "t5\\x1b]0;owned\\x07\\x1b[2J\\x9b31m" in r.stdout
    hub.commit("owner/err", files)
    hub.hostile("owner/err", error="boom\x1b[31m red\x07 \u009b1m")
    for argv in (["pull", "owner/err"], ["inspect", "hf://owner/err"]):
        r = cli(*argv)
        msg = _one_error(r)
        assert "boom\\x1b[31m red\\x07 \\x9b1m" in msg
    for text in (r.stdout, r.stderr):
        assert not any(c in text for c in "\x1b\x07\u009b")


def test_a_failed_python_call_quotes_the_server_escaped(hub, served):
    from mptkit import hub as mhub
    from mptkit.errors import HubError

    hub.hostile("owner/bank", error="\x1b]52;c;cGF5bG9hZA==\x07 clipboard")
    with pytest.raises(HubError, match=r"\\x1b\]52;c;cGF5bG9hZA==\\x07 clipboard"):
        mhub.fetch("owner/bank")


# -- 11. the commit a server answers for; the cache's own failures --------------------------------
def test_an_answer_from_another_commit_is_refused(hub, cli, served, sandbox, monkeypatch):
    hub.hostile("owner/bank", repo_commit="ab" * 20)
    for argv in (["pull", "owner/bank"], ["inspect", "hf://owner/bank"]):
        msg = _one_error(cli(*argv))
        assert "answered from commit 'abab" in msg and hub.repos["owner/bank"].refs["main"] in msg, msg
    assert sandbox.cache_files() == [] and sandbox.outside() == []
    hub.clear()
    assert cli("pull", "owner/bank").exit_code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the files are under the commit the pull resolved
    r = cli("pull", "owner/bank", "-o", sandbox.out / "p")
    assert r.exit_code == 0 and "from the local cache" in r.stdout


def _read_only(path: Path):
    """A command prefix that runs with ``path`` read-only (a private bind mount, for root; a
    mode of 0o555 otherwise), or None where neither can be done here."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        return []
    if not shutil.which("unshare"):
        return None
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{path}" "{path}"'], capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{path}" "{path}" && exec "$@"', "-"]


def test_a_read_only_cache_is_blamed_on_the_cache(hub, served, sandbox):
    import sys

    sandbox.home.mkdir(parents=True, exist_ok=True)
    prefix = _read_only(sandbox.home)
    if prefix is None:
        pytest.skip("cannot make a folder read-only here (not root-free, no mount namespace)")
    r = subprocess.run(
        [*prefix, sys.executable, "-m", "mptkit", "pull", "owner/bank", "-o", sandbox.out / "p"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    msg = _one_error(r)
    assert "cannot write to the HF cache at" in msg and ("read-only" in msg or "permission denied" in msg), msg
    assert "HF_HUB_CACHE" in msg and "Hub" not in msg.split("cannot write to the HF cache")[0]
    assert os.listdir(sandbox.out) == []


def test_a_killed_download_leaves_a_temp_the_next_download_removes(hub, cli, served, sandbox):
    """A download killed mid-way (SIGKILL: no clean-up) leaves its temp in ``blobs/``; its lock died
    with it, so the next download in that repo removes it. A temp whose writer still holds the lock
    is left alone."""
    import fcntl
    import signal
    import sys
    import time

    hub.hostile("owner/bank", slow=0.05)
    p = subprocess.Popen(
        [sys.executable, "-m", "mptkit", "pull", "owner/bank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    blobs = sandbox.home / "hub" / "models--owner--bank" / "blobs"
    deadline = time.monotonic() + 60
    while not (blobs.is_dir() and any(x.name.endswith(".incomplete") for x in blobs.iterdir())):
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)  # the temp exists: the kill lands mid-download by construction
    p.wait()
    left = [x for x in blobs.iterdir() if x.name.endswith(".incomplete")]
    assert len(left) == 1
    held = blobs / ".mptkit-download-1-0123456789ab.incomplete"  # another writer's, in use
    fd = os.open(held, os.O_WRONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        hub.clear()
        assert cli("pull", "owner/bank").exit_code == 0
        assert sorted(x.name for x in blobs.iterdir() if x.name.endswith(".incomplete")) == [held.name]
    finally:
        os.close(fd)
    assert sandbox.outside() == []
