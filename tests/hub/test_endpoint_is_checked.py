"""A malformed ``HF_ENDPOINT``: an unclosed IPv6 bracket, a port past 65535, no scheme,
another scheme, no host. The client library fails to import with one (a ValueError at import
time); every Hub command says what is wrong with it in one sentence, exit 2, before that."""

from __future__ import annotations

import pytest

from tests.support.commands import one_error, run_mptkit

BAD = {
    "http://[::1": "Invalid IPv6 URL",
    "http://127.0.0.1:99999": "Port out of range",
    "ftp://mirror.example": "must start with http:// or https://",
    "mirror.example": "must start with http:// or https://",
    "https://:8080": "names no host",
}


@pytest.mark.parametrize("value", list(BAD))
def test_a_malformed_endpoint_is_one_sentence(value, example_bank, tmp_path):
    env = {"HF_ENDPOINT": value, "HF_HOME": str(tmp_path / "hf")}
    for argv in (
        ["pull", "owner/bank"],
        ["inspect", "hf://owner/bank"],
        ["push", example_bank, "owner/bank"],
        ["derive", "hf://owner/bank", "--mode", "exact", "--task", "0", "-o", tmp_path / "d.safetensors"],
    ):
        msg = one_error(run_mptkit(*argv, env=env), "HF_ENDPOINT is not a usable URL", BAD[value])
        assert value in msg and "https://huggingface.co" in msg
    # offline, the client is still imported (to read its cache): the same sentence
    r = run_mptkit("pull", "owner/bank", env={**env, "HF_HUB_OFFLINE": "1"})
    one_error(r, "HF_ENDPOINT is not a usable URL")
    assert not (tmp_path / "d.safetensors").exists()


def test_the_python_api_raises_a_usage_error(monkeypatch):
    from mptkit import hub as mhub
    from mptkit.errors import UsageError

    monkeypatch.setenv("HF_ENDPOINT", "http://[::1")
    with pytest.raises(UsageError, match=r"HF_ENDPOINT is not a usable URL: 'http://\[::1' \(Invalid IPv6 URL\)"):
        mhub.fetch("owner/bank")


def test_an_endpoint_with_a_password_is_never_shown_whole(tmp_path):
    r = run_mptkit(
        "pull", "owner/bank", env={"HF_ENDPOINT": "http://user:hunter2-secret@[::1", "HF_HOME": str(tmp_path)}
    )
    msg = one_error(r, "HF_ENDPOINT is not a usable URL")
    assert "hunter2-secret" not in r.stderr + r.stdout, msg
