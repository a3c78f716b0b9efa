"""Stalls outside a response's body: a server that drips the header lines of an answer,
stops after its status line, sends ``100 Continue`` interim answers without end, or never reads a
request's body. The deadline and the no-progress timeout cover the whole exchange: each command
gives up with the limit's own sentence, exit 2. The stalls happen by construction (the server
never sends the next header line, never reads), so nothing here depends on how fast the machine is."""

from __future__ import annotations

from tests.fakehub.wirefront import continue_flood, drip_headers, never_read_body, silent_after_status
from tests.support.banks import sparse_bank
from tests.support.commands import one_error
from tests.support.measured import run_measured


def test_headers_dripped_a_byte_at_a_time_end_at_the_deadline(front):
    front.rule(r"/tree/", drip_headers(0.05))  # 20 bytes a second: progress of a kind, never an answer
    r = run_measured("pull", "owner/bank", "--deadline", "3", "--timeout", "60", wall_limit_s=120)
    msg = one_error(r, "cannot list the repo root", "longer than the deadline of 3 s", "--deadline")
    assert "hf://owner/bank" in msg
    assert front.seen(r"/tree/")  # the stall was where it was put


def test_an_answer_that_stops_after_its_status_line_is_no_progress(front):
    front.rule(r"/api/models/owner/bank", silent_after_status())
    for argv in (["pull", "owner/bank"], ["inspect", "hf://owner/bank"]):
        r = run_measured(*argv, "--timeout", "1", "--deadline", "600", wall_limit_s=120)
        one_error(r, "cannot look up the repo", "sent less than 1024 bytes in 1 s", "no progress", "--timeout")


def test_interim_answers_without_end_end_at_the_deadline(front):
    front.rule(r"/api/models/owner/bank", continue_flood())
    r = run_measured("inspect", "hf://owner/bank", "--deadline", "3", "--timeout", "60", wall_limit_s=120)
    one_error(r, "cannot look up the repo", "longer than the deadline of 3 s")


def test_a_server_that_never_reads_the_upload_ends_at_the_deadline(front, tmp_path):
    """The commit's body (about 43 MB: more than the sockets' buffers hold) is never read, so the
    client's writes block: the deadline covers sending too."""
    sparse_bank(tmp_path / "big.safetensors", T=800, N=100, r=1, d=10_000, filled=[0])
    front.rule(r"/commit/", never_read_body())
    r = run_measured(
        "push", tmp_path / "big.safetensors", "owner/bank", "--no-images", "--task-type", "CAUSAL_LM",
        "--num-virtual-tokens", "100", "--deadline", "8", "--timeout", "60", wall_limit_s=120,
    )  # fmt: skip
    one_error(r, "cannot commit the bank", "longer than the deadline of 8 s")
    assert front.seen(r"/commit/")
