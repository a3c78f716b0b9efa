"""Hub transfers: the real huggingface_hub client against the loopback server in
tests/fakehub (fixture ``hub``), with a fresh HF cache per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.banks import load_tensors, random_bank
from tests.support.commands import one_error, run_mptkit


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_error(result) -> str:
    """The run failed the way every user mistake must: exit 2, one line on stderr, no traceback."""
    return one_error(result)


def _bank_bytes(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in _files(folder).items() if k in ("adapter_config.json", "adapter_model.safetensors")}


@pytest.fixture
def pushed(hub, cli, peft_banks):
    """A PEFT-saved bank pushed to owner/bank; returns its source folder."""
    src = peft_banks("seq2seq")
    r = cli("push", src, "owner/bank")
    assert r.exit_code == 0, r.stderr
    return src


# -- push / pull round trip -----------------------------------------------------------------------
def test_push_then_pull_round_trips_byte_for_byte(hub, cli, pushed, tmp_path):
    remote = hub.files("owner/bank")
    assert {k: remote[k] for k in ("adapter_config.json", "adapter_model.safetensors")} == _bank_bytes(pushed)
    assert "README.md" in remote
    # a file the bank does not need is never downloaded
    hub.commit("owner/bank", {"extra/big.bin": b"\0" * 50_000}, "unrelated file")
    hub.clear()

    out = tmp_path / "pulled"
    r = cli("pull", "owner/bank", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert _files(out) == _bank_bytes(pushed)  # a plain folder: the two bank files, nothing else
    assert f"into {out}" in r.stdout and "T=3" in r.stdout
    fetched = {q.path.rsplit("/", 1)[-1] for q in hub.requests if "/resolve/" in q.path}
    assert fetched == {"adapter_config.json", "adapter_model.safetensors"}

    # without -o: the HF cache, and the output says where
    r = cli("pull", "owner/bank", "--json")
    info = json.loads(r.stdout)
    cache = Path(os.environ["HF_HOME"]) / "hub" / "models--owner--bank" / "snapshots" / info["commit"]
    assert Path(info["path"]) == cache
    assert _bank_bytes(cache) == _bank_bytes(pushed)
    assert info["summary"]["num_tasks"] == 3 and info["files"] == ["adapter_config.json", "adapter_model.safetensors"]
    r = cli("pull", "owner/bank")
    assert f"into {cache} (the HF cache)" in r.stdout


def test_pulled_adapter_loads_in_peft_with_the_same_weights(hub, cli, pushed, tmp_path):
    import torch
    from peft import PeftModel

    from tests.support.banks import tiny_base_model

    out = tmp_path / "pulled"
    assert cli("pull", "owner/bank", "-o", out).exit_code == 0
    model = PeftModel.from_pretrained(tiny_base_model("seq2seq"), str(out))
    enc = model.prompt_encoder["default"]
    want = load_tensors(pushed)
    assert torch.equal(enc.embedding.weight, want["prompt_embeddings"])
    assert torch.equal(enc.prefix_task_cols, want["prefix_task_cols"])
    assert torch.equal(enc.prefix_task_rows, want["prefix_task_rows"])


def test_second_push_of_the_same_bank_changes_nothing(hub, cli, pushed):
    head = hub.repos["owner/bank"].refs["main"]
    commits = len(hub.repos["owner/bank"].commits)
    r = cli("push", pushed, "owner/bank")
    assert r.exit_code == 0, r.stderr
    assert "nothing to push" in r.stdout
    assert hub.repos["owner/bank"].refs["main"] == head and len(hub.repos["owner/bank"].commits) == commits
    r = cli("push", pushed, "owner/bank", "--json")
    assert json.loads(r.stdout)["changed"] is False


def test_push_of_a_changed_bank_makes_a_new_commit(hub, cli, pushed, tmp_path):
    renamed = tmp_path / "renamed"
    assert cli("rename", pushed, "--names", "a,b,c", "-o", renamed).exit_code == 0
    head = hub.repos["owner/bank"].refs["main"]
    r = cli("push", renamed, "owner/bank", "-m", "name the tasks", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["changed"] and out["commit"] != head == hub.repos["owner/bank"].commits[out["commit"]].parent
    assert hub.repos["owner/bank"].commits[out["commit"]].message == "name the tasks"
    assert "| 1 | b |" in hub.files("owner/bank")["README.md"].decode()


# -- model card -------------------------------------------------------------------------------------
def test_card_parses_and_carries_the_metadata(hub, cli, peft_banks, tmp_path):
    from huggingface_hub import ModelCard

    named = tmp_path / "named"
    assert cli("rename", peft_banks("causal"), "--names", "sst2,mnli,qnli", "-o", named).exit_code == 0
    r = cli("push", named, "owner/card", "--base-model", "openai-community/gpt2")
    assert r.exit_code == 0, r.stderr
    card = ModelCard(hub.files("owner/card")["README.md"].decode())
    assert card.data.library_name == "peft"
    assert card.data.base_model == "openai-community/gpt2"
    assert card.data.pipeline_tag == "text-generation"
    for tag in ("base_model:adapter:openai-community/gpt2", "multitask-prompt-tuning", "mptkit"):
        assert tag in card.data.tags
    text = card.text
    for row in ("| 0 | sst2 |", "| 1 | mnli |", "| 2 | qnli |"):
        assert row in text
    assert "| `prompt_embeddings` | [5, 24] | F32 |" in text and "| `prefix_task_cols` | [3, 5, 2] | F32 |" in text
    assert "shared prompt: N x d = 120" in text and "per task: N x r + r x d = 58" in text
    assert "total: 294" in text
    assert "`rename`" in text  # provenance
    assert 'PeftModel.from_pretrained(base, "owner/card")' in text and "AutoModelForCausalLM" in text
    assert "mptkit pull owner/card" in text
    config = json.loads(hub.files("owner/card")["adapter_config.json"])
    assert config["base_model_name_or_path"] == "openai-community/gpt2"


# -- what push uploads ----------------------------------------------------------------------------
def test_bare_file_needs_its_config_then_becomes_an_adapter_folder(hub, cli, tmp_path):
    src = random_bank(tmp_path / "bank.safetensors", T=3, N=6, r=2, d=8, names=["a", "b", "c"])
    msg = _one_error(cli("push", src, "owner/bare"))
    assert "--task-type" in msg and "--num-virtual-tokens" in msg and str(src) in msg
    assert hub.requests == [] and "owner/bare" not in hub.repos  # nothing was sent

    r = cli("push", src, "owner/bare", "--task-type", "CAUSAL_LM", "--num-virtual-tokens", "6")
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "pulled"
    assert cli("pull", "owner/bare", "-o", out).exit_code == 0
    assert sorted(_files(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["task_type"], config["num_virtual_tokens"], config["num_tasks"]) == ("CAUSAL_LM", 6, 3)
    import torch

    got, want = load_tensors(out), load_tensors(src)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads(cli("inspect", out, "--json").stdout)["task_names"] == ["a", "b", "c"]


def test_invalid_bank_is_never_pushed(hub, cli, peft_banks, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, data in _files(peft_banks("seq2seq")).items():
        (bad / name).write_bytes(data[:-100] if name == "adapter_model.safetensors" else data)
    msg = _one_error(cli("push", bad, "owner/bad"))
    assert "adapter_model.safetensors" in msg
    assert hub.requests == []


def test_token_is_used_but_never_shown(hub, cli, peft_banks, monkeypatch):
    secret = "hf_SuperSecretToken123"
    hub.require_token = secret
    msg = _one_error(cli("push", peft_banks("seq2seq"), "owner/private", "--private"))
    assert "token" in msg and secret not in msg
    r = cli("push", peft_banks("seq2seq"), "owner/private", "--private", "--token", secret)
    assert r.exit_code == 0, r.stderr
    assert secret not in r.stdout + r.stderr
    assert hub.repos["owner/private"].private
    assert all(secret.encode() not in data for data in hub.files("owner/private").values())
    assert any(q.headers.get("authorization") == f"Bearer {secret}" for q in hub.requests)
    # a private repo is invisible without the token, and readable with HF_TOKEN
    msg = _one_error(cli("pull", "owner/private"))
    assert "no repo owner/private" in msg and "token" in msg
    monkeypatch.setenv("HF_TOKEN", secret)
    r = cli("pull", "owner/private")
    assert r.exit_code == 0 and secret not in r.stdout + r.stderr


def test_pushing_a_bin_adapter_removes_a_stale_safetensors(hub, cli, pushed, peft_banks):
    src = peft_banks("seq2seq", safe=False)
    r = cli("push", src, "owner/bank")
    assert r.exit_code == 0, r.stderr
    files = hub.files("owner/bank")
    assert "adapter_model.safetensors" not in files
    assert files["adapter_model.bin"] == (src / "adapter_model.bin").read_bytes()


def test_push_to_a_branch_and_as_a_pull_request(hub, cli, pushed):
    main_head = hub.repos["owner/bank"].refs["main"]
    r = cli("push", pushed, "owner/bank", "--revision", "dev", "--base-model", "t5-small")
    assert r.exit_code == 0, r.stderr
    assert hub.repos["owner/bank"].refs["main"] == main_head
    assert "base_model: t5-small" in hub.files("owner/bank", "dev")["README.md"].decode()
    assert 'revision="dev"' in hub.files("owner/bank", "dev")["README.md"].decode()
    r = cli("pull", "owner/bank@dev", "--json")
    assert json.loads(r.stdout)["summary"]["base_model"] == "t5-small"

    r = cli("push", pushed, "owner/bank", "--create-pr", "--base-model", "t5-base")
    assert r.exit_code == 0, r.stderr
    assert "/owner/bank/discussions/1" in r.stdout
    assert hub.repos["owner/bank"].refs["main"] == main_head
    assert "t5-base" in hub.files("owner/bank", "refs/pr/1")["README.md"].decode()
    r = cli("inspect", "hf://owner/bank@refs/pr/1", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["base_model"] == "t5-base"


# -- hf:// references everywhere ------------------------------------------------------------------
def test_derive_validate_and_load_take_hf_references(hub, cli, pushed, tmp_path):
    import mptkit

    r = cli("validate", "hf://owner/bank")
    assert r.exit_code == 0 and "valid" in r.stdout
    out, local = tmp_path / "out", tmp_path / "local"
    r = cli("derive", "hf://owner/bank", "--mode", "exact", "--task", "1", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert cli("derive", pushed, "--mode", "exact", "--task", "1", "-o", local).exit_code == 0
    import torch

    got, want = load_tensors(out), load_tensors(local)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert got["prefix_task_cols"].shape[0] == 1

    bank = mptkit.load("hf://owner/bank")
    assert bank.source.path == "hf://owner/bank" and bank.num_tasks == 3
    head = hub.repos["owner/bank"].refs["main"]
    assert mptkit.load(f"hf://owner/bank@{head}/adapter_config.json").num_tasks == 3
    # a bare file inside a repo, named by its path
    random_bank(tmp_path / "x.safetensors", T=2)
    hub.commit(
        "owner/files",
        {
            "banks/x.safetensors": (tmp_path / "x.safetensors").read_bytes(),
            "banks/y.safetensors": (tmp_path / "x.safetensors").read_bytes(),
        },
    )
    assert mptkit.load("hf://owner/files/banks/x.safetensors").num_tasks == 2
    msg = _one_error(cli("inspect", "hf://owner/files/banks"))
    assert "several .safetensors files" in msg and "hf://owner/files/banks/x.safetensors" in msg
    out2 = tmp_path / "bare-copy"
    assert cli("pull", "hf://owner/files/banks/x.safetensors", "-o", out2).exit_code == 0
    assert _files(out2) == {"x.safetensors": (tmp_path / "x.safetensors").read_bytes()}


def test_python_push_uploads_the_bank_as_changed_in_memory(hub, peft_banks, tmp_path):
    import mptkit
    from mptkit import hub as mhub

    bank = mptkit.load(peft_banks("seq2seq"))
    out = mhub.push(bank, "owner/api")
    assert (
        out["changed"]
        and hub.files("owner/api")["adapter_model.safetensors"]
        == (peft_banks("seq2seq") / "adapter_model.safetensors").read_bytes()
    )
    bank.task_names = ["x", "y", "z"]  # no longer what its folder holds: written afresh, not copied
    out = mhub.push(bank, "owner/api", message="names")
    assert out["changed"]
    pulled, got = mhub.pull("owner/api", tmp_path / "p")
    assert pulled.task_names == ["x", "y", "z"] and got.commit == out["commit"]


def test_remote_inspect_reads_only_the_header(hub, cli, tmp_path):
    src = random_bank(tmp_path / "big.safetensors", T=2, N=64, r=1, d=4096, names=["x", "y"])
    size = src.stat().st_size
    assert size > 1_000_000
    hub.commit("owner/big", {"big.safetensors": src.read_bytes()})
    hub.clear()
    r = cli("inspect", "hf://owner/big")
    assert r.exit_code == 0, r.stderr
    assert "read only the safetensors header" in r.stdout and "not downloaded" in r.stdout
    sent = hub.bytes_sent(r"/resolve/.*big\.safetensors$")
    assert 0 < sent < size / 5, (sent, size)
    assert all("range" in q.headers for q in hub.requests if q.path.endswith("big.safetensors") and q.method == "GET")
    assert not (Path(os.environ["HF_HOME"]) / "hub" / "models--owner--big" / "blobs").exists()

    remote = json.loads(cli("inspect", "hf://owner/big", "--json").stdout)
    local = json.loads(cli("inspect", src, "--json").stdout)
    for key in ("kind", "dtype", "num_tasks", "N", "rank", "d", "task_names", "parameters", "tensors", "file_size"):
        assert remote[key] == local[key], key
    assert remote["remote"]["commit"] == hub.repos["owner/big"].refs["main"]


def test_remote_inspect_checks_the_header(hub, cli, tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file(
        {
            "prompt_embeddings": torch.zeros(4, 8),
            "prefix_task_cols": torch.zeros(2, 5, 1),
            "prefix_task_rows": torch.zeros(2, 1, 8),
        },
        str(tmp_path / "bad.safetensors"),
    )
    hub.commit("owner/badshape", {"bad.safetensors": (tmp_path / "bad.safetensors").read_bytes()})
    msg = _one_error(cli("inspect", "hf://owner/badshape"))
    assert msg.startswith("mptkit: error: hf://owner/badshape/bad.safetensors: ") and "prefix_task_cols" in msg


def test_remote_inspect_of_an_adapter_reads_its_config(hub, cli, pushed):
    hub.clear()
    s = json.loads(cli("inspect", "hf://owner/bank", "--json").stdout)
    assert s["format"] == "peft-adapter" and s["task_type"] == "SEQ_2_SEQ_LM"
    assert (s["num_virtual_tokens"], s["num_transformer_submodules"]) == (5, 2)
    assert {q.path.rsplit("/", 1)[-1] for q in hub.requests if "/resolve/" in q.path} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }


# -- errors: one sentence, exit 2 -----------------------------------------------------------------
@pytest.mark.parametrize(
    "args, expect",
    [
        (("pull", "owner/missing"), "no repo owner/missing"),
        (("pull", "owner/bank@nope"), "no revision 'nope'"),
        (("pull", "owner/bank", "--revision", "v9"), "no revision 'v9'"),
        (("inspect", "hf://owner/bank/nothere.safetensors"), "no file or folder 'nothere.safetensors'"),
        (("validate", "hf://owner/bank/sub"), "no file or folder 'sub'"),
        (("pull", "owner/bank@main/x", "--revision", "dev"), "names revision 'main' but --revision says 'dev'"),
        (("inspect", "hf://owner"), "expected owner/repo"),
        (("inspect", "hf://owner/bank/../x"), "leaves the repo"),
        (("push", "examples/bank", "owner/x/y"), "without a path"),
    ],
)
def test_clear_errors(hub, cli, pushed, args, expect):
    assert expect in _one_error(cli(*args))


def test_missing_file_behind_a_listing(hub, cli, pushed):
    hub.fault("status", path=r"/resolve/.*adapter_model", code=404, error_code="EntryNotFound", times=None)
    msg = _one_error(cli("pull", "owner/bank"))
    assert "download adapter_model.safetensors" in msg and "not in owner/bank" in msg


@pytest.mark.parametrize(
    "kind, options, expect",
    [
        (
            "status",
            {"code": 500, "message": "database on fire"},
            "answered HTTP 500 when asked to look up the repo: database on fire",
        ),
        ("garbage", {}, "sent an answer that could not be used"),
        ("drop", {}, "the connection to"),
    ],
)
def test_server_failures(hub, cli, pushed, kind, options, expect):
    hub.fault(kind, path=r"^/api/models/owner/bank", method="GET", **options)
    assert expect in _one_error(cli("pull", "owner/bank"))


def test_a_bank_repo_with_nothing_to_load(hub, cli):
    hub.commit("owner/empty", {"notes.txt": b"hi"})
    msg = _one_error(cli("pull", "owner/empty"))
    assert "no prompt bank here" in msg and "notes.txt" in msg
    hub.commit("owner/half", {"adapter_config.json": b"{}"})
    assert "neither adapter_model.safetensors nor adapter_model.bin" in _one_error(cli("pull", "owner/half"))


@pytest.mark.parametrize("name", ["../evil.safetensors", "/tmp/evil.safetensors", "a/../../evil.safetensors"])
def test_file_names_that_escape_are_refused(hub, cli, tmp_path, name, monkeypatch):
    src = random_bank(tmp_path / "b.safetensors", T=2)
    hub.commit("owner/evil", {name: src.read_bytes()})
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "deep" / "out"
    msg = _one_error(cli("pull", "owner/evil", "-o", out))
    assert "would escape" in msg and repr(name) in msg
    assert not out.exists() and not (tmp_path / "deep" / "evil.safetensors").exists()
    assert not (tmp_path / "evil.safetensors").exists()
    assert not [q for q in hub.requests if "/resolve/" in q.path]  # nothing was downloaded
    assert "would escape" in _one_error(cli("inspect", "hf://owner/evil"))


def test_pull_refuses_an_existing_output_without_force(hub, cli, pushed, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "already exists" in _one_error(cli("pull", "owner/bank", "-o", out))
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only a bank or an empty folder: keep.txt is not a bank's file
    assert "not part of a bank" in _one_error(cli("pull", "owner/bank", "-o", out, "--force"))
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert cli("pull", "owner/bank", "-o", out, "--force").exit_code == 0
    assert sorted(_files(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert cli("pull", "owner/bank", "-o", out, "--force").exit_code == 0  # a pulled bank is replaced


# -- offline ----------------------------------------------------------------------------------------
def test_offline_with_an_empty_cache_is_one_sentence(hub, cli, pushed, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.clear()
    for args in (("pull", "owner/bank"), ("inspect", "hf://owner/bank"), ("validate", "hf://owner/bank")):
        msg = _one_error(cli(*args))
        assert "HF_HUB_OFFLINE" in msg and "holds no copy" in msg
    assert "HF_HUB_OFFLINE is set" in _one_error(cli("push", pushed, "owner/bank"))
    assert hub.requests == []


def test_offline_answers_from_a_filled_cache(hub, cli, pushed, tmp_path):
    assert cli("pull", "owner/bank").exit_code == 0  # fills the cache
    hub.clear()
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": os.environ["HF_HOME"], "HF_ENDPOINT": hub.url}
    r = run_mptkit("inspect", "hf://owner/bank", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["num_tasks"] == 3
    out = tmp_path / "offline-copy"
    r = run_mptkit("pull", "owner/bank", "-o", out, env=env)
    assert r.returncode == 0, r.stderr
    assert "from the local cache" in r.stdout
    assert _files(out) == _bank_bytes(pushed)
    r = run_mptkit("derive", "hf://owner/bank", "--mode", "exact", "--task", "0", "-o", tmp_path / "t0", env=env)
    assert r.returncode == 0, r.stderr
    r = run_mptkit("pull", "owner/bank@dev", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "holds no copy" in r.stderr
    empty = {**env, "HF_HOME": str(tmp_path / "empty-home")}
    r = run_mptkit("pull", "owner/bank", env=empty)
    assert r.returncode == 2 and r.stderr.startswith("mptkit: error: ") and "Traceback" not in r.stderr
    assert hub.requests == []  # offline means offline


# -- the module itself ----------------------------------------------------------------------------
def test_huggingface_hub_is_imported_only_for_hub_work():
    from tests.support.commands import loaded_modules

    code, mods = loaded_modules("inspect", "examples/bank", cwd=ROOT)
    assert code == 0 and "huggingface_hub" not in mods, mods


def test_endpoint_and_cache_follow_the_environment_at_call_time(monkeypatch, tmp_path):
    from mptkit import hub

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert hub.endpoint() == "http://127.0.0.1:9"
    monkeypatch.delenv("HF_ENDPOINT")
    assert hub.endpoint() is None  # the client's own default
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert hub.cache_dir() == str(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub.cache_dir() == str(tmp_path / "c")


@pytest.mark.parametrize(
    "text, repo, rev, path",
    [
        ("hf://o/r", "o/r", None, ""),
        ("hf://o/r@v1", "o/r", "v1", ""),
        ("hf://o/r@v1/sub/x.safetensors", "o/r", "v1", "sub/x.safetensors"),
        ("hf://o/r/a.safetensors", "o/r", None, "a.safetensors"),
        ("hf://o/r@refs/pr/3/a", "o/r", "refs/pr/3", "a"),
        ("hf://o/r@release%2F2", "o/r", "release/2", ""),
        ("hf://models/o/r", "o/r", None, ""),
        ("o/r@main", "o/r", "main", ""),
    ],
)
def test_parse_ref(text, repo, rev, path):
    from mptkit.hub import HubRef, parse_ref

    ref = parse_ref(text)
    assert (ref.repo_id, ref.revision, ref.path) == (repo, rev, path)
    assert parse_ref(str(ref)) == ref == HubRef(repo, rev, path)


@pytest.mark.parametrize(
    "text, why",
    [
        ("hf://o", "expected owner/repo"),
        ("hf://o/r@", "empty revision"),
        ("hf://o/r/../x", "leaves the repo"),
        ("hf://o/r@../x", "not a valid revision"),
        ("hf://o--x/r", "not a valid repo id"),
        ("hf://datasets/o/r", "model repos"),
        ("hf://-o/r", "not a valid repo id"),
    ],
)
def test_parse_ref_refuses(text, why):
    from mptkit.errors import UsageError
    from mptkit.hub import parse_ref

    with pytest.raises(UsageError, match=why):
        parse_ref(text)


def test_progress_bars_only_on_a_terminal_and_not_with_quiet(hub, cli, pushed, tmp_path):
    """The client's own bars: shown on a terminal, off with --quiet, off without a terminal."""
    from tests.support.commands import run_on_terminal

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}

    def run(*args, tty: bool) -> str:
        cmd = [sys.executable, "-m", "mptkit", *map(str, args)]
        if not tty:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
            assert r.returncode == 0, r.stderr
            return r.stderr
        code, _, shown = run_on_terminal(cmd, env, stdout_too=True)
        assert code == 0, shown
        return shown

    def bars(text):
        return "100%" in text and "adapter_model.safetensors" in text

    assert bars(run("pull", "owner/bank", "-o", tmp_path / "a", tty=True))
    assert not bars(run("pull", "owner/bank", "-o", tmp_path / "b", "--quiet", tty=True))
    assert not bars(run("pull", "owner/bank", "-o", tmp_path / "c", tty=False))
