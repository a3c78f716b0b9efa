"""Hostile-hub attacks, each run as a real ``python -m mptkit`` process against the loopback Hub
of tests/fakehub (the server impersonates the Hub through ``HF_ENDPOINT``), some behind the
raw-socket front of tests/fakehub/wirefront.py (dripped headers, 100 Continue floods, compressed
bombs, rate limits, endless pages, other hosts).

    python -m benchmarks.hub_attacks                      # this checkout
    python -m benchmarks.hub_attacks --src /path/to/old   # another checkout of mptkit (before/after)
    python -m benchmarks.hub_attacks --only slow          # attacks whose name contains "slow"

One row per command: exit status, wall time, peak RSS of the process, paths written outside the HF
cache and the output, whether a secret or a raw control character reached the terminal, what the
attack itself checks (``note``: the token at another host, code injected into a card) and the last
line of stderr. The same attacks are tests (tests/hub/test_hostile_server.py, tests/hub/test_hub_*.py);
this script is how the before/after tables of the hostile-Hub work were measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fakehub import Blob, HubServer
from tests.fakehub.wirefront import WireFront
from tests.support.banks import sparse_bank

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TOKEN = "hf_AttackerWantsThisToken1234"
#: what must never reach the terminal (the token, a plain token given with --token, an endpoint's password)
SECRETS = (TOKEN.removeprefix("hf_"), "plain-secret-0123456789", "pa55w0rd-xyz")
LIMIT_S = 90
_MEASURE = """
import os, signal, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
signal.signal(signal.SIGTERM, lambda *a: os.kill(pid, signal.SIGKILL))  # a hang: its figures still come
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{ru.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run(src: Path, root: Path, argv: list[str], env: dict, read_only: Path | None = None, prefix=()) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MPTKIT_"))}
    e.update(
        {
            "PYTHONPATH": str(src),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "MPTKIT_CACHE": str(root / "mptkit-cache"),
            **env,
        }
    )
    before = _tree(root)
    out, err = root / "stdout.txt", root / "stderr.txt"
    t0 = time.monotonic()
    with open(out, "wb") as o, open(err, "wb") as er:
        cmd = [*prefix, sys.executable, "-m", "mptkit", *argv]
        if read_only is not None:  # the folder read-only for this process alone (a private bind mount)
            cmd = [
                "unshare",
                "-m",
                "sh",
                "-c",
                f'mount --bind -o ro "{read_only}" "{read_only}" && exec "$@"',
                "-",
                *cmd,
            ]
        figures = root / "figures.txt"
        # a small wrapper starts the command and reads its wait4 figures: the peak RSS of a child of
        # this process would include this process's own (Linux folds it in at exec)
        wrapper = [sys.executable, "-S", "-c", _MEASURE, str(figures), *cmd]
        p = subprocess.Popen(wrapper, stdout=o, stderr=er, env=e, cwd=root / "work", start_new_session=True)
        try:
            p.wait(LIMIT_S)
        except subprocess.TimeoutExpired:
            p.terminate()  # the wrapper kills the command and writes its figures
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        rss_kb, code = figures.read_text().split() if figures.exists() else ("0", "-9")
        figures.unlink(missing_ok=True)
    wall = time.monotonic() - t0
    text = out.read_bytes() + err.read_bytes()
    out.unlink()
    err.unlink()
    allowed = (root / "home" / "hf" / "hub", root / "out", root / "mptkit-cache")
    new = sorted(
        str(p.relative_to(root))
        for p in _tree(root) - before
        if not any(p == a or a in p.parents for a in allowed)
        and p.name not in ("stdout.txt", "stderr.txt", "figures.txt")
    )
    lines = [x for x in text.decode(errors="replace").splitlines() if x.strip()]
    return {
        "argv": " ".join(argv),
        "rc": "killed" if wall >= LIMIT_S else int(code),
        "wall_s": round(wall, 1),
        "rss_mb": round(int(rss_kb) / 1024) if rss_kb != "0" else "?",
        "outside": new[:3],
        "token_shown": any(x[:12].encode() in text for x in SECRETS),  # a secret cut short shows too
        "raw_escape": any(c in text for c in (b"\x1b", b"\x07", b"\xc2\x9b")),
        "said": (lines[-1] if lines else "")[:400],
    }


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def adapter(tmp: Path, config_extra: dict | None = None) -> dict[str, bytes]:
    from shutil import copyfile

    folder = tmp / "adapter"
    folder.mkdir(exist_ok=True)
    copyfile(ROOT / "examples" / "bank" / "adapter_model.safetensors", folder / "adapter_model.safetensors")
    cfg = json.loads((ROOT / "examples" / "bank" / "adapter_config.json").read_text())
    cfg.update(config_extra or {})
    return {
        "adapter_config.json": json.dumps(cfg, indent=2).encode(),
        "adapter_model.safetensors": (folder / "adapter_model.safetensors").read_bytes(),
    }


def attacks(tmp: Path):
    """(name, setup(hub, root, stack) -> [(argv, env, read_only[, prefix, check])]): ``stack`` holds
    what the setup opens (a front); ``check()`` says what the attack itself checks afterwards."""

    def etag(hub, root, stack):
        hub.commit("owner/bank", adapter(tmp))
        bad = f'"{os.path.relpath(root / "escaped", root / "home/hf/hub/models--owner--bank/blobs")}"'
        hub.hostile("owner/bank", etag=bad, linked_etag=f'"{root / "abs-escaped"}"')
        return [
            (["pull", "owner/bank"], {}, None),
            (["pull", "owner/bank", "-o", "../out/p"], {}, None),
            (["inspect", "hf://owner/bank"], {}, None),
        ]

    def flipped(hub, root, stack):
        files = adapter(tmp)
        hub.commit("owner/bank", files)
        hub.hostile(
            "owner/bank",
            linked_etag='"not-hex"',
            flip={"adapter_model.safetensors": len(files["adapter_model.safetensors"]) - 3},
        )
        return [(["pull", "owner/bank", "-o", "../out/p"], {}, None), (["validate", "../out/p"], {}, None)]

    def slow(hub, root, stack):
        hub.commit("owner/bank", adapter(tmp))
        hub.hostile("owner/bank", slow=5.0)
        return [(["pull", "owner/bank"], {}, None), (["inspect", "hf://owner/bank"], {}, None)]

    def ignore_range(hub, root, stack):
        sparse_bank(tmp / "big.safetensors", T=70_000, N=100, r=1, d=4096)
        hub.commit("owner/big", {"big.safetensors": Blob.file(tmp / "big.safetensors")})
        hub.hostile("owner/big", ignore_range=True)
        return [(["inspect", "hf://owner/big"], {}, None)]

    def big_config(hub, root, stack):
        files = adapter(tmp)
        head = files["adapter_config.json"][:-1] + b', "padding": "'
        files["adapter_config.json"] = Blob.pattern(300_000_000, head, b"a", b'"}')
        hub.commit("owner/bank", files)
        return [(["inspect", "hf://owner/bank"], {}, None)]

    def listing(hub, root, stack):
        hub.commit("owner/bank", adapter(tmp))
        hub.hostile("owner/bank", listing=3_000_000)
        return [(["inspect", "hf://owner/bank"], {}, None), (["pull", "owner/bank"], {}, None)]

    def token(hub, root, stack):
        hub.commit("owner/bank", adapter(tmp))
        hub.hostile("owner/bank", echo_auth=True)
        env = {"HF_TOKEN": TOKEN}
        return [
            (["pull", "owner/bank"], env, None),
            (["push", str(ROOT / "examples" / "bank"), "owner/bank"], env, None),
            (["pull", "owner/bank", "--token", TOKEN.removeprefix("hf_")], {}, None),
        ]

    def escapes(hub, root, stack):
        hub.commit("owner/bank", adapter(tmp, {"base_model_name_or_path": "t5\x1b]0;pwned\x07\x1b[2J\x9b31m"}))
        hub.commit("owner/err", adapter(tmp))
        hub.hostile("owner/err", error="boom\x1b[31m red\x07 \x9b1m")
        return [(["inspect", "hf://owner/bank"], {}, None), (["pull", "owner/err"], {}, None)]

    def repo_commit(hub, root, stack):
        hub.commit("owner/bank", adapter(tmp))
        hub.hostile("owner/bank", repo_commit="ab" * 20)
        return [(["pull", "owner/bank"], {}, None), (["pull", "owner/bank"], {"HF_HUB_OFFLINE": "1"}, None)]

    def read_only(hub, root, stack):
        hub.commit("owner/bank", adapter(tmp))
        return [(["pull", "owner/bank", "-o", "../out/p"], {}, root / "home" / "hf")]

    return [
        ("1 etag path", etag),
        ("2 non-hex etag + flipped byte", flipped),
        ("3 slow body", slow),
        ("4 server ignores Range", ignore_range),
        ("4 300 MB adapter_config.json", big_config),
        ("4 listing of 3 M files", listing),
        ("7 token echoed", token),
        ("8 escapes", escapes),
        ("11 wrong X-Repo-Commit", repo_commit),
        ("11 read-only HF_HOME", read_only),
        *server_attacks(tmp),
    ]


def server_attacks(tmp: Path):
    """Servers that stall outside a body, inflate, ask for waits, page without end, take tokens
    elsewhere or store nothing; secrets in odd forms; a broken HF_ENDPOINT, a full cache, a card
    value that would be code (rows "26.N": the items of the hostile-input round they answer)."""
    import zlib

    from tests.fakehub.wirefront import continue_flood, drip_headers, never_read_body, reply, send

    def fronted(hub, stack):
        hub.commit("owner/bank", adapter(tmp))
        front = stack.enter_context(WireFront(hub.url))
        return front, {"HF_ENDPOINT": front.url}

    def busy(**headers):
        return reply(429, b'{"error": "slow down"}', {"Content-Type": "application/json", **headers})

    def retry_after(hub, root, stack):
        front, env = fronted(hub, stack)
        front.rule(r"/tree/", busy(**{"Retry-After": "86400"}), times=None)
        return [(["inspect", "hf://owner/bank"], env, None)]

    def ratelimit(hub, root, stack):
        front, env = fronted(hub, stack)
        front.rule(r"/tree/", busy(RateLimit='"api";r=0;t=86400'), times=None)
        return [(["pull", "owner/bank"], env, None)]

    def dripped(hub, root, stack):
        front, env = fronted(hub, stack)
        front.rule(r"/tree/", drip_headers(0.05))
        return [(["pull", "owner/bank", "--deadline", "5"], env, None)]

    def flood(hub, root, stack):
        front, env = fronted(hub, stack)
        front.rule(r"/api/models/", continue_flood())
        return [(["inspect", "hf://owner/bank", "--deadline", "5"], env, None)]

    def unread(hub, root, stack):
        front, env = fronted(hub, stack)
        sparse_bank(tmp / "push.safetensors", T=800, N=100, r=1, d=10_000, filled=[0])
        front.rule(r"/commit/", never_read_body())
        argv = ["push", str(tmp / "push.safetensors"), "owner/bank", "--no-images", "--task-type", "CAUSAL_LM"]
        return [([*argv, "--num-virtual-tokens", "100", "--deadline", "8"], env, None)]

    def bomb(layers: int):
        c = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        spaces = b" " * (1 << 20)
        body = c.compress(b"[") + b"".join(c.compress(spaces) for _ in range(1024)) + c.compress(b"]") + c.flush()
        for _ in range(layers - 1):
            c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            body = c.compress(body) + c.flush()
        return body

    def gzip_listing(layers: int, status: int = 200, where: str = r"/tree/"):
        def setup(hub, root, stack):
            front, env = fronted(hub, stack)
            enc = ", ".join(["gzip"] * layers)
            front.rule(
                where, reply(status, bomb(layers), {"Content-Type": "application/json", "Content-Encoding": enc})
            )
            return [(["inspect", "hf://owner/bank"], env, None)]

        return setup

    def pages(hub, root, stack):
        front, env = fronted(hub, stack)

        def act(conn, req, f):
            n = int(req.target.rsplit("cursor=", 1)[1]) if "cursor=" in req.target else 0
            link = f'<{f.url}{req.path}?recursive=false&expand=false&cursor={n + 1}>; rel="next"'
            send(conn, 200, b"[]", {"Content-Type": "application/json", "Link": link})

        front.rule(r"/tree/", act)
        return [(["inspect", "hf://owner/bank"], env, None)]

    def other_host(hub, root, stack):
        front, env = fronted(hub, stack)
        other = stack.enter_context(WireFront(hub.url))

        def first(conn, req, f):
            status, reason, headers, body = f.fetch(req)
            link = f'<{other.url}{req.path}?recursive=false&expand=false&cursor=1>; rel="next"'
            send(conn, status, body, [*headers, ("Link", link)], reason)

        front.rule(r"/tree/", first, times=1)
        other.rule(r"cursor=1", reply(200, b"[]", {"Content-Type": "application/json"}))

        def got():
            leaked = any("authorization" in q.headers for q in other.seen())
            return f"token-at-other-host={'YES' if leaked else 'no'}"

        return [(["inspect", "hf://owner/bank"], {**env, "HF_TOKEN": TOKEN}, None, (), got)]

    def crlf_token(hub, root, stack):
        hub.commit("owner/bank", adapter(tmp))
        hub.hostile("owner/bank", echo_auth=True)
        return [(["pull", "owner/bank", "--token", "plain-secret-0123456789\r"], {}, None)]

    def cut_token(hub, root, stack):
        front, env = fronted(hub, stack)

        def echo(conn, req, f):
            token = req.headers.get("authorization", "")
            send(
                conn, 401, json.dumps({"error": "x" * 140 + " " + token}).encode(), {"Content-Type": "application/json"}
            )

        front.rule(r"/api/models/", echo)
        return [(["pull", "owner/bank", "--token", "plain-secret-0123456789"], env, None)]

    def endpoint_password(hub, root, stack):
        front, env = fronted(hub, stack)
        return [
            (["pull", "owner/missing"], {"HF_ENDPOINT": front.url.replace("http://", "http://u:pa55w0rd-xyz@")}, None)
        ]

    def fake_commit(hub, root, stack):
        front, env = fronted(hub, stack)
        answer = {
            "commitOid": "ab" * 20,
            "commitUrl": f"{front.url}/owner/bank/commit/{'ab' * 20}",
            "pullRequestUrl": None,
        }
        front.rule(r"/commit/", reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"}))
        return [(["push", str(ROOT / "examples" / "bank"), "owner/bank"], env, None)]

    def bad_endpoint(hub, root, stack):
        return [(["pull", "owner/bank"], {"HF_ENDPOINT": "http://[::1"}, None)]

    def full_cache(hub, root, stack):
        sparse_bank(tmp / "full.safetensors", T=64, N=16, r=1, d=4096, filled=range(64))
        hub.commit("owner/big", {"big.safetensors": Blob.file(tmp / "full.safetensors")})
        home = root / "home" / "hf"
        prefix = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=256k tmpfs "{home}" && exec "$@"', "-"]
        return [(["pull", "owner/big"], {}, None, prefix)]

    def card(hub, root, stack):
        base = 't5")\nimport os; os.system("echo pwned")\n#'
        folder = tmp / "card-bank"
        folder.mkdir(exist_ok=True)
        for name, data in adapter(tmp, {"base_model_name_or_path": base}).items():
            (folder / name).write_bytes(data)

        def injected():
            card = hub.files("owner/bank").get("README.md", b"").decode()
            code = card.split("```python", 1)[-1].split("```", 1)[0]  # the card's PEFT usage block
            lines = [x.strip() for x in code.split("\n")]
            return "injected-code-line=" + ("YES" if 'import os; os.system("echo pwned")' in lines else "no")

        return [(["push", str(folder), "owner/bank"], {}, None, (), injected)]

    return [
        ("26.3 Retry-After: 1 day", retry_after),
        ("26.3 RateLimit t=1 day", ratelimit),
        ("26.4 headers dripped", dripped),
        ("26.4 100 Continue flood", flood),
        ("26.4 upload never read", unread),
        ("26.5 gzip listing 1 GB", gzip_listing(1)),
        ("26.5 gzip x2 listing 1 GB", gzip_listing(2)),
        ("26.5 gzip x2 500 error 1 GB", gzip_listing(2, 500, r"/api/models/")),
        ("26.7 endless empty pages", pages),
        ("26.8 next page on other host", other_host),
        ("26.9 --token ending in CR", crlf_token),
        ("26.9 token echoed, cut short", cut_token),
        ("26.10 HF_ENDPOINT password", endpoint_password),
        ("26.19 commit stores nothing", fake_commit),
        ("26.23 HF_ENDPOINT http://[::1", bad_endpoint),
        ("26.25 full HF cache (tmpfs)", full_cache),
        ("26.28 card base_model injection", card),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", type=Path, default=ROOT, help="the checkout of mptkit to attack")
    ap.add_argument("--only", default="")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mptkit-attacks-") as t:
        tmp = Path(t)
        for name, setup in attacks(tmp):
            if args.only not in name:
                continue
            root = tmp / name.replace(" ", "_")
            for sub in ("work", "out", "home/hf"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            with HubServer() as hub, contextlib.ExitStack() as stack:
                base = {"HF_ENDPOINT": hub.url, "HF_HOME": str(root / "home" / "hf")}
                for argv, env, ro, *more in setup(hub, root, stack):
                    prefix, check = (more[0] if more else ()), (more[1] if len(more) > 1 else None)
                    r = run(args.src, root, argv, {**base, **env}, ro, prefix)
                    r["attack"] = name
                    r["note"] = check() if check else ""
                    rows.append(r)
                    if not args.json:
                        print(
                            f"{name:<30} {r['argv'][:44]:<45} rc={r['rc']!s:<6} {r['wall_s']:>5.1f} s "
                            f"{r['rss_mb']:>5} MB outside={r['outside'] or '-'} "
                            f"token={'YES' if r['token_shown'] else 'no'} "
                            f"raw-escape={'YES' if r['raw_escape'] else 'no'} "
                            + (f"{r['note']} " if r["note"] else "")
                            + f"| {r['said']}",
                            flush=True,
                        )
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
