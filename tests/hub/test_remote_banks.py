"""Remote banks at any size: an ``hf://`` bank is read by byte ranges, so an operation
moves only the bytes it needs. The real huggingface_hub client talks to the loopback server of
tests/fakehub, which counts the bytes it sends; the bank is a 1 GB sparse file (8,000 tasks,
N=128, d=32,768, r=1), served from disk. Each bound is the one the design sets: header + N x d x 4 +
the tasks' rows of both factors + 64 kB, and each result equals the same operation on the local
copy, bit for bit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fakehub import Blob, git_blob_sha1
from tests.support import ROOT
from tests.support.banks import sparse_bank

T, N, R, D = 8_000, 128, 1, 32_768
FILLED = (0, 3, 5, 7, 6_000)
SLACK = 64 << 10
WEIGHTS = r"/resolve/.*adapter_model\.safetensors$"


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """The 1 GB bank as a local adapter folder (the "full local copy"), and its blob for serving."""
    folder = tmp_path_factory.mktemp("remote") / "bank"
    folder.mkdir()
    names = [f"t{i:05d}" for i in range(T)]
    layout = sparse_bank(folder / "adapter_model.safetensors", T=T, N=N, r=R, d=D, filled=FILLED, seed=3, names=names)
    cfg = json.loads((ROOT / "examples" / "bank" / "adapter_config.json").read_text())
    cfg.update(
        num_tasks=T, num_ranks=R, token_dim=D, num_virtual_tokens=N, num_transformer_submodules=1, task_type="CAUSAL_LM"
    )
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    blob = Blob.file(folder / "adapter_model.safetensors")
    assert blob.size > 1_000_000_000 and blob.sha256  # hashed once for the whole module
    return {"folder": folder, "layout": layout, "blob": blob, "config": (folder / "adapter_config.json").read_bytes()}


@pytest.fixture
def remote(hub, big):
    hub.commit("owner/bank", {"adapter_config.json": big["config"], "adapter_model.safetensors": big["blob"]})
    hub.clear()
    return big


def bound(big, tasks: int) -> int:
    return big["layout"]["header"] + N * D * 4 + tasks * (N * R + R * D) * 4 + SLACK


def _tensors(path):
    from tests.support.banks import load_tensors

    return load_tensors(path)


def _equal(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _names(path) -> list[str] | None:
    import mptkit

    return mptkit.load(path).task_names


# -- the bounds --------------------------------------------------------------------------------
def test_derive_exact_moves_one_task(hub, cli, remote, tmp_path):
    r = cli("derive", "hf://owner/bank", "--mode", "exact", "--task", "7", "-o", tmp_path / "remote.safetensors")
    assert r.exit_code == 0, r.output
    sent = hub.bytes_sent(WEIGHTS)
    assert 0 < sent <= bound(remote, 1), (sent, bound(remote, 1))
    gets = [q for q in hub.requests if q.method == "GET" and q.path.endswith("adapter_model.safetensors")]
    assert all("range" in q.headers for q in gets) and len(gets) <= 6
    assert (
        cli(
            "derive", remote["folder"], "--mode", "exact", "--task", "7", "-o", tmp_path / "local.safetensors"
        ).exit_code
        == 0
    )
    assert _equal(_tensors(tmp_path / "remote.safetensors"), _tensors(tmp_path / "local.safetensors"))
    assert _names(tmp_path / "remote.safetensors") == ["t00007"]


def test_derive_shared_moves_the_shared_prompt(hub, cli, remote, tmp_path):
    r = cli("derive", "hf://owner/bank", "--mode", "shared", "-o", tmp_path / "s.safetensors")
    assert r.exit_code == 0, r.output
    assert hub.bytes_sent(WEIGHTS) <= bound(remote, 0)
    assert cli("derive", remote["folder"], "--mode", "shared", "-o", tmp_path / "l.safetensors").exit_code == 0
    assert _equal(_tensors(tmp_path / "s.safetensors"), _tensors(tmp_path / "l.safetensors"))


def test_slice_of_three_tasks(hub, cli, remote, tmp_path):
    r = cli("slice", "hf://owner/bank", "--tasks", "6000,3,t00005", "-o", tmp_path / "remote")
    assert r.exit_code == 0, r.output
    assert hub.bytes_sent(WEIGHTS) <= bound(remote, 3)
    assert cli("slice", remote["folder"], "--tasks", "6000,3,t00005", "-o", tmp_path / "local").exit_code == 0
    assert _equal(_tensors(tmp_path / "remote"), _tensors(tmp_path / "local"))
    assert _names(tmp_path / "remote") == ["t06000", "t00003", "t00005"]
    assert json.loads((tmp_path / "remote" / "adapter_config.json").read_text())["num_tasks"] == 3


def test_task_prompts_from_a_remote_bank_hold_just_those_tasks(hub, remote):
    import torch

    from mptkit.serve._runtime import TaskPrompts

    got = TaskPrompts.from_bank("hf://owner/bank", tasks=[3, 5])
    assert hub.bytes_sent(WEIGHTS) <= bound(remote, 2)
    want = TaskPrompts.from_bank(str(remote["folder"]), tasks=["t00003", "t00005"])
    assert got.task_names == want.task_names == ["t00003", "t00005"] and got.num_tasks == 2
    assert torch.equal(got(torch.tensor([1, 0])), want(torch.tensor([1, 0])))
    assert torch.equal(got.prefix_task_rows, want.prefix_task_rows) and torch.equal(
        got.embedding.weight, want.embedding.weight
    )


def test_pull_tasks_writes_a_partial_copy(hub, cli, remote, tmp_path):
    r = cli("pull", "owner/bank", "--tasks", "0,7", "-o", tmp_path / "part")
    assert r.exit_code == 0, r.output
    assert hub.bytes_sent(WEIGHTS) <= bound(remote, 2)
    assert "tasks t00000, t00007" in r.stdout
    assert cli("validate", tmp_path / "part").exit_code == 0
    assert cli("slice", remote["folder"], "--tasks", "0,7", "-o", tmp_path / "local").exit_code == 0
    assert _equal(_tensors(tmp_path / "part"), _tensors(tmp_path / "local"))
    part = json.loads((tmp_path / "part" / "adapter_config.json").read_text())
    local = json.loads((tmp_path / "local" / "adapter_config.json").read_text())
    assert part == local
    import mptkit

    bank = mptkit.load(tmp_path / "part")
    entry = bank.provenance[-1]
    commit = hub.repos["owner/bank"].refs["main"]
    assert entry["operation"] == "pull" and entry["arguments"]["commit"] == commit
    assert entry["arguments"]["tasks"] == [0, 7] and entry["arguments"]["task_names"] == ["t00000", "t00007"]
    src = entry["sources"][0]
    assert src["sha256"] == remote["blob"].sha256
    assert src["hub"] == {
        "repo": "owner/bank",
        "revision": "main",
        "commit": commit,
        "file": "adapter_model.safetensors",
        "sha256": remote["blob"].sha256,
        "partial": True,
    }
    # nothing of the partial read went into the HF cache as if it were the file
    snap = Path(os.environ["HF_HOME"]) / "hub" / "models--owner--bank" / "snapshots" / commit
    assert not (snap / "adapter_model.safetensors").exists()
    msg = cli("pull", "owner/bank", "--tasks", "0,7")
    assert msg.exit_code == 2 and "needs" not in msg.stderr and "-o" in msg.stderr


def test_inspect_values_similarity_and_export_of_a_few_tasks(hub, cli, remote, tmp_path):
    r = cli("inspect", "hf://owner/bank", "--values", "--tasks", "3,7", "--json")
    assert r.exit_code == 0, r.output
    assert hub.bytes_sent(WEIGHTS) <= bound(remote, 2)
    got = json.loads(r.stdout)["values"]["tasks"]
    want = json.loads(cli("inspect", remote["folder"], "--values", "--tasks", "3,7", "--json").stdout)["values"][
        "tasks"
    ]
    assert got == want and [t["task"] for t in got] == [3, 7] and got[1]["name"] == "t00007"
    hub.clear()
    r = cli("similarity", "hf://owner/bank", "--tasks", "3,5,7", "--json")
    assert r.exit_code == 0, r.output
    assert hub.bytes_sent(WEIGHTS) <= bound(remote, 3)
    assert json.loads(r.stdout) == json.loads(cli("similarity", remote["folder"], "--tasks", "3,5,7", "--json").stdout)
    hub.clear()
    r = cli("export", "hf://owner/bank", "--task", "5", "-o", tmp_path / "pt")
    assert r.exit_code == 0, r.output
    assert hub.bytes_sent(WEIGHTS) <= bound(remote, 1)


def test_remote_provenance_names_the_commit_and_says_partial(hub, cli, remote, tmp_path):
    assert (
        cli("derive", "hf://owner/bank", "--mode", "exact", "--task", "3", "-o", tmp_path / "d.safetensors").exit_code
        == 0
    )
    import mptkit

    src = mptkit.load(tmp_path / "d.safetensors").provenance[-1]["sources"][0]
    assert src["hub"]["partial"] is True and src["hub"]["commit"] == hub.repos["owner/bank"].refs["main"]
    assert src["hub"]["file"] == "adapter_model.safetensors" and src["sha256"] == remote["blob"].sha256


# -- one commit per command -----------------------------------------------------------------------
def test_a_branch_that_moves_mid_command_does_not_mix_banks(hub, cli, remote, tmp_path, example_bank):
    first = hub.repos["owner/bank"].refs["main"]
    other = {p.name: p.read_bytes() for p in example_bank.iterdir()}
    # after the first range request of the weights, main moves to a different bank
    hub.after(WEIGHTS, lambda: hub.commit("owner/bank", other, "replace the bank"))
    r = cli("derive", "hf://owner/bank", "--mode", "exact", "--task", "7", "-o", tmp_path / "d.safetensors")
    assert r.exit_code == 0, r.output
    assert hub.repos["owner/bank"].refs["main"] != first  # it did move
    resolves = [q.path for q in hub.requests if "/resolve/" in q.path]
    assert len(resolves) >= 3 and all(f"/resolve/{first}/" in p for p in resolves)
    assert (
        cli("derive", remote["folder"], "--mode", "exact", "--task", "7", "-o", tmp_path / "l.safetensors").exit_code
        == 0
    )
    assert _equal(_tensors(tmp_path / "d.safetensors"), _tensors(tmp_path / "l.safetensors"))


# -- servers that do not answer the ranges asked for -----------------------------------------------
@pytest.mark.parametrize(
    "how, expect",
    [
        ({"ignore_range": True}, "ignored the range request"),
        ({"range_shift": 4096}, "Content-Range"),
    ],
)
def test_a_wrong_answer_to_a_range_is_refused(hub, cli, remote, tmp_path, how, expect):
    hub.hostile("owner/bank", **how)
    r = cli("derive", "hf://owner/bank", "--mode", "exact", "--task", "7", "-o", tmp_path / "d.safetensors")
    assert r.exit_code == 2 and expect in r.stderr and r.stderr.count("\n") == 1, r.output
    assert not (tmp_path / "d.safetensors").exists()
    # the client stops at the status line; the server may have filled the socket's buffers by then
    assert hub.bytes_sent(WEIGHTS) < 64 << 20  # of a 1 GB file


def test_a_truncated_range_is_one_sentence_and_caches_nothing(hub, cli, remote, tmp_path, monkeypatch):
    import mptkit.hub._http as mhttp

    monkeypatch.setattr(mhttp, "pause", lambda s: None)
    hub.fault("truncate", path=WEIGHTS, method="GET", keep=0, times=None)
    r = cli("derive", "hf://owner/bank", "--mode", "exact", "--task", "7", "-o", tmp_path / "d.safetensors")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert "adapter_model.safetensors" in r.stderr and "connection broke after byte" in r.stderr
    assert not (tmp_path / "d.safetensors").exists()
    blobs = Path(os.environ["HF_HOME"]) / "hub" / "models--owner--bank" / "blobs"
    assert [p.name for p in blobs.iterdir()] == [git_blob_sha1(remote["config"])]
    # cut short once, then whole: the retry resumes and the result is right
    hub.clear()
    hub.fault("truncate", path=WEIGHTS, method="GET", keep=1000, times=1)
    r = cli("derive", "hf://owner/bank", "--mode", "exact", "--task", "7", "-o", tmp_path / "d.safetensors")
    assert r.exit_code == 0, r.output
    assert (
        cli("derive", remote["folder"], "--mode", "exact", "--task", "7", "-o", tmp_path / "l.safetensors").exit_code
        == 0
    )
    assert _equal(_tensors(tmp_path / "d.safetensors"), _tensors(tmp_path / "l.safetensors"))


# -- offline, and the cache -------------------------------------------------------------------------
def test_offline_reads_what_a_full_pull_cached(hub, cli, peft_banks, tmp_path, monkeypatch):
    src = peft_banks("seq2seq")
    hub.commit("owner/small", {p.name: p.read_bytes() for p in src.iterdir()})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = cli("derive", "hf://owner/small", "--mode", "exact", "--task", "1", "-o", tmp_path / "x.safetensors")
    assert r.exit_code == 2 and "holds no copy" in r.stderr
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert cli("pull", "owner/small").exit_code == 0
    hub.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for argv in (
        ["derive", "hf://owner/small", "--mode", "exact", "--task", "1", "-o", tmp_path / "a.safetensors"],
        ["pull", "owner/small", "--tasks", "2", "-o", tmp_path / "b"],
        ["inspect", "hf://owner/small", "--values", "--tasks", "0"],
    ):
        r = cli(*argv)
        assert r.exit_code == 0, (argv, r.output)
    assert hub.requests == []
    assert cli("derive", src, "--mode", "exact", "--task", "1", "-o", tmp_path / "l.safetensors").exit_code == 0
    assert _equal(_tensors(tmp_path / "a.safetensors"), _tensors(tmp_path / "l.safetensors"))


def test_a_bank_in_the_cache_is_read_there_not_by_ranges(hub, cli, tmp_path):
    """A full pull, then a derive: the weights come from the verified cached copy."""
    layout = sparse_bank(tmp_path / "m.safetensors", T=300, N=32, r=2, d=1024, filled=range(0, 300, 7))
    assert layout["size"] > 2 << 20
    hub.commit("owner/mid", {"m.safetensors": (tmp_path / "m.safetensors").read_bytes()})
    assert cli("pull", "owner/mid").exit_code == 0
    hub.clear()
    assert (
        cli("derive", "hf://owner/mid", "--mode", "exact", "--task", "7", "-o", tmp_path / "d.safetensors").exit_code
        == 0
    )
    assert hub.bytes_sent(r"/resolve/") == 0 and any("/tree/" in q.path for q in hub.requests)


def test_a_pickle_bank_downloads_whole_and_says_so(hub, cli, peft_banks):
    src = peft_banks("seq2seq", safe=False)
    hub.commit("owner/pickle", {p.name: p.read_bytes() for p in src.iterdir()})
    r = cli("inspect", "hf://owner/pickle")
    assert r.exit_code == 0, r.output
    assert "is a pickle" in r.stdout and "downloaded in full" in r.stdout


def _in_a_terminal(argv, env) -> tuple[int, str]:
    """Run ``python -m mptkit ARGV`` on a pseudo-terminal; (exit status, what it showed)."""
    import sys

    from tests.support.commands import run_on_terminal

    code, _, shown = run_on_terminal([sys.executable, "-m", "mptkit", *argv], env, stdout_too=True, cols=120)
    return code, shown


def test_a_range_transfer_over_a_second_shows_a_bar_on_a_terminal(hub, remote, tmp_path):
    hub.hostile("owner/bank", rate=8e6)  # the 16 MB shared prompt takes about 2 s
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    code, shown = _in_a_terminal(
        ["derive", "hf://owner/bank", "--mode", "exact", "--task", "7", "-o", tmp_path / "a.safetensors"], env
    )
    assert code == 0, shown
    assert "adapter_model.safetensors (ranges)" in shown and "MB/s" in shown
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mptkit",
            "derive",
            "hf://owner/bank",
            "--mode",
            "exact",
            "--task",
            "7",
            "-o",
            tmp_path / "b.safetensors",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0 and "(ranges)" not in r.stderr and r.stderr == ""  # no terminal, no bar
