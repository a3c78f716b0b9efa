"""Hostile-hub attacks, each run as a real ``python -m mptkit`` process against the
loopback Hub of tests/fakehub (the server impersonates the Hub through ``HF_ENDPOINT``).

    python -m benchmarks.hub_attacks                      # this checkout
    python -m benchmarks.hub_attacks --src /path/to/old   # another checkout of mptkit (before/after)
    python -m benchmarks.hub_attacks --only slow          # attacks whose name contains "slow"

One row per command: exit status, wall time, peak RSS of the process, paths written outside the HF
cache and the output, whether a token or a raw control character reached the terminal, and the
first line of stderr. The same attacks are tests (tests/hub/test_hostile_server.py); this script is how
the before/after table of the hostile-Hub work was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fakehub import Blob, HubServer
from tests.support.banks import sparse_bank

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TOKEN = "hf_AttackerWantsThisToken1234"
LIMIT_S = 90


def run(src: Path, root: Path, argv: list[str], env: dict, read_only: Path | None = None) -> dict:
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
        cmd = [sys.executable, "-m", "mptkit", *argv]
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
        p = subprocess.Popen(cmd, stdout=o, stderr=er, env=e, cwd=root / "work")
        deadline = t0 + LIMIT_S
        status = ru = None
        while time.monotonic() < deadline:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        else:
            p.kill()
            _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    text = out.read_bytes() + err.read_bytes()
    out.unlink()
    err.unlink()
    allowed = (root / "home" / "hf" / "hub", root / "out", root / "mptkit-cache")
    new = sorted(
        str(p.relative_to(root))
        for p in _tree(root) - before
        if not any(p == a or a in p.parents for a in allowed) and p.name not in ("stdout.txt", "stderr.txt")
    )
    lines = [x for x in text.decode(errors="replace").splitlines() if x.strip()]
    code = os.waitstatus_to_exitcode(status) if status is not None else None
    return {
        "argv": " ".join(argv),
        "rc": "killed" if wall >= LIMIT_S else code,
        "wall_s": round(wall, 1),
        "rss_mb": round(ru.ru_maxrss / 1024),
        "outside": new[:3],
        "token_shown": TOKEN.removeprefix("hf_").encode() in text,
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
    """(name, setup(hub, root) -> [(argv, env, user)])"""

    def etag(hub, root):
        hub.commit("owner/bank", adapter(tmp))
        bad = f'"{os.path.relpath(root / "escaped", root / "home/hf/hub/models--owner--bank/blobs")}"'
        hub.hostile("owner/bank", etag=bad, linked_etag=f'"{root / "abs-escaped"}"')
        return [
            (["pull", "owner/bank"], {}, None),
            (["pull", "owner/bank", "-o", "../out/p"], {}, None),
            (["inspect", "hf://owner/bank"], {}, None),
        ]

    def flipped(hub, root):
        files = adapter(tmp)
        hub.commit("owner/bank", files)
        hub.hostile(
            "owner/bank",
            linked_etag='"not-hex"',
            flip={"adapter_model.safetensors": len(files["adapter_model.safetensors"]) - 3},
        )
        return [(["pull", "owner/bank", "-o", "../out/p"], {}, None), (["validate", "../out/p"], {}, None)]

    def slow(hub, root):
        hub.commit("owner/bank", adapter(tmp))
        hub.hostile("owner/bank", slow=5.0)
        return [(["pull", "owner/bank"], {}, None), (["inspect", "hf://owner/bank"], {}, None)]

    def ignore_range(hub, root):
        sparse_bank(tmp / "big.safetensors", T=70_000, N=100, r=1, d=4096)
        hub.commit("owner/big", {"big.safetensors": Blob.file(tmp / "big.safetensors")})
        hub.hostile("owner/big", ignore_range=True)
        return [(["inspect", "hf://owner/big"], {}, None)]

    def big_config(hub, root):
        files = adapter(tmp)
        head = files["adapter_config.json"][:-1] + b', "padding": "'
        files["adapter_config.json"] = Blob.pattern(300_000_000, head, b"a", b'"}')
        hub.commit("owner/bank", files)
        return [(["inspect", "hf://owner/bank"], {}, None)]

    def listing(hub, root):
        hub.commit("owner/bank", adapter(tmp))
        hub.hostile("owner/bank", listing=3_000_000)
        return [(["inspect", "hf://owner/bank"], {}, None), (["pull", "owner/bank"], {}, None)]

    def token(hub, root):
        hub.commit("owner/bank", adapter(tmp))
        hub.hostile("owner/bank", echo_auth=True)
        env = {"HF_TOKEN": TOKEN}
        return [
            (["pull", "owner/bank"], env, None),
            (["push", str(ROOT / "examples" / "bank"), "owner/bank"], env, None),
            (["pull", "owner/bank", "--token", TOKEN.removeprefix("hf_")], {}, None),
        ]

    def escapes(hub, root):
        hub.commit("owner/bank", adapter(tmp, {"base_model_name_or_path": "t5\x1b]0;pwned\x07\x1b[2J\x9b31m"}))
        hub.commit("owner/err", adapter(tmp))
        hub.hostile("owner/err", error="boom\x1b[31m red\x07 \x9b1m")
        return [(["inspect", "hf://owner/bank"], {}, None), (["pull", "owner/err"], {}, None)]

    def repo_commit(hub, root):
        hub.commit("owner/bank", adapter(tmp))
        hub.hostile("owner/bank", repo_commit="ab" * 20)
        return [(["pull", "owner/bank"], {}, None), (["pull", "owner/bank"], {"HF_HUB_OFFLINE": "1"}, None)]

    def read_only(hub, root):
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
            with HubServer() as hub:
                base = {"HF_ENDPOINT": hub.url, "HF_HOME": str(root / "home" / "hf")}
                for argv, env, ro in setup(hub, root):
                    r = run(args.src, root, argv, {**base, **env}, ro)
                    r["attack"] = name
                    rows.append(r)
                    if not args.json:
                        print(
                            f"{name:<30} {r['argv'][:44]:<45} rc={r['rc']!s:<6} {r['wall_s']:>5.1f} s "
                            f"{r['rss_mb']:>5} MB outside={r['outside'] or '-'} "
                            f"token={'YES' if r['token_shown'] else 'no'} "
                            f"raw-escape={'YES' if r['raw_escape'] else 'no'} | {r['said']}",
                            flush=True,
                        )
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
