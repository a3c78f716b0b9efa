"""Serving prompt embeddings: what a request's ``inputs_embeds`` cost with
``mptkit.serve.PromptEmbedder``, and what finding and loading a base model's input embedding reads.

    python -m benchmarks.serve_bench            # 32 requests x 512 tokens, N=100, d=4096, V=32,000; 10 GB checkpoints
    python -m benchmarks.serve_bench --quick    # small sizes, 1 GB checkpoints
    python -m benchmarks.serve_bench --threads 2  # torch threads (default 1: a busy shared machine)

Table 1, one run, the same requests (every result is first checked bit-identical to PEFT's):
  mptkit batch         PromptEmbedder.batch(tasks, ids): the tasks' prompts (computed once, kept)
                       and the tokens' rows of the memory-mapped matrix, in one (B, N + L, d) tensor
  mptkit first batch   from_pretrained + the first batch (the prompts computed, the rows' pages read)
  peft                 PEFT's own path: word_embeddings(input_ids), get_prompt(task_ids), cast, cat
                       (PeftModelForCausalLM.forward, stopped where it calls the base model)
  copy (floor)         a plain copy of the (B, N + L, d) output's bytes
  vllm_request x B     the Completions API bodies of the batch: torch.save + base64 of each request

Table 2: bytes read to find the input embedding (config, index, the shard's header) and to load it,
for a sparse whole-model ``model.safetensors`` and a sharded checkpoint of the same tensors, read
locally (the process's ``rchar`` from /proc/self/io) and from the loopback Hub of tests/fakehub
(the bytes it sent for file requests); beside the bound: the header (and index) + the tensor +
64 kB, and the checkpoint's size.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._timing import median_run
from tests.support.banks import sparse_safetensors

SLACK = 64 << 10


# -- table 1 -----------------------------------------------------------------------------------
def embeds_table(tmp: Path, B: int, L: int, N: int, d: int, V: int, T: int, r: int, repeat: int) -> None:
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    import mptkit
    from mptkit.serve import PromptEmbedder
    from tests.support.banks import random_bank

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=d,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=8,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()  # the embedding is all that is large
    model.save_pretrained(str(tmp / "model"))
    bank = mptkit.load(random_bank(tmp / "bank.safetensors", T=T, N=N, r=r, d=d))
    mptkit.save(bank.with_config({"task_type": "CAUSAL_LM", "num_virtual_tokens": N}), tmp / "bank")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, L), generator=g)
    tasks = torch.randperm(T, generator=g)[:4][torch.randint(0, 4, (B,), generator=g)]

    peft = PeftModel.from_pretrained(model, str(tmp / "bank")).eval()
    caught = {}

    class Stop(Exception):
        pass

    def catch(module, args, kw):
        caught["x"] = kw["inputs_embeds"]
        raise Stop

    peft.base_model.register_forward_pre_hook(catch, with_kwargs=True)

    def peft_path():
        try:
            with torch.no_grad():
                peft(input_ids=ids, task_ids=tasks)
        except Stop:
            return caught["x"]

    emb = PromptEmbedder.from_pretrained(tmp / "bank", tmp / "model")
    ours = emb.batch(tasks.tolist(), ids)
    assert torch.equal(ours, peft_path()), "not PEFT's inputs_embeds"

    def first():
        PromptEmbedder.from_pretrained(tmp / "bank", tmp / "model").batch(tasks.tolist(), ids)

    rows = [
        ("mptkit batch", median_run(lambda: emb.batch(tasks.tolist(), ids), repeat, warmup=2)[0]),
        ("mptkit first batch", median_run(first, max(3, repeat // 4), warmup=2)[0]),
        ("peft", median_run(peft_path, repeat, warmup=2)[0]),
        ("copy (floor)", median_run(lambda: torch.empty_like(ours).copy_(ours), repeat, warmup=2)[0]),
        (
            f"vllm_request x {B}",
            median_run(lambda: [emb.vllm_request(int(t), i) for t, i in zip(tasks, ids)], 3, warmup=2)[0],
        ),
    ]
    mb = ours.numel() * ours.element_size() / 1e6
    print(f"\n{B} requests x {L} tokens, N={N}, d={d}, V={V:,} ({ours.dtype}), T={T}, r={r}; output {mb:.0f} MB")
    print(f"  {'':<22}{'median (ms)':>12}{'x copy':>8}")
    base = rows[3][1]
    for name, t in rows:
        print(f"  {name:<22}{t * 1e3:>12.1f}{t / base:>8.2f}")


# -- table 2 -----------------------------------------------------------------------------------
def llama_like(gb: float, V: int = 32_000, d: int = 4096) -> dict[str, list[int]]:
    """A Llama-7B-like list of BF16 tensors, scaled to about ``gb`` GB."""
    layers = 32
    per_layer = int(gb * 1e9 / 2 - 2 * V * d) // layers
    inter = max(1, (per_layer - 4 * d * d) // (3 * d))
    out = {"model.embed_tokens.weight": [V, d], "lm_head.weight": [V, d], "model.norm.weight": [d]}
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[p + f"self_attn.{m}.weight"] = [d, d]
        out[p + "mlp.gate_proj.weight"] = [inter, d]
        out[p + "mlp.up_proj.weight"] = [inter, d]
        out[p + "mlp.down_proj.weight"] = [d, inter]
        out[p + "input_layernorm.weight"] = [d]
        out[p + "post_attention_layernorm.weight"] = [d]
    return out


def sparse_file(path: Path, tensors: dict[str, list[int]]) -> int:
    """A BF16 safetensors file of ``tensors`` that is a hole on disk; returns its header length."""
    return sparse_safetensors(path, {name: ("BF16", tensors[name]) for name in sorted(tensors)})["data_start"]


def checkpoints(tmp: Path, gb: float, V: int, d: int) -> dict:
    tensors = llama_like(gb, V, d)
    cfg = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d}).encode()
    whole, sharded = tmp / "whole", tmp / "sharded"
    for p in (whole, sharded):
        p.mkdir()
        (p / "config.json").write_bytes(cfg)
    head = sparse_file(whole / "model.safetensors", tensors)
    names = sorted(tensors)
    parts = [names[i::4] for i in range(4)]
    parts.sort(key=lambda ns: "model.embed_tokens.weight" not in ns)
    weight_map, shard_head = {}, None
    for i, ns in enumerate(parts):
        f = f"model-{i + 1:05d}-of-00004.safetensors"
        h = sparse_file(sharded / f, {n: tensors[n] for n in ns})
        shard_head = h if "model.embed_tokens.weight" in ns else shard_head
        weight_map.update(dict.fromkeys(ns, f))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return {
        "whole": (whole, head, 0),
        "sharded": (sharded, shard_head, (sharded / "model.safetensors.index.json").stat().st_size),
        "tensor": V * d * 2,
        "size": sum(p.stat().st_size for p in whole.glob("*")),
    }


def rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(x for x in f if x.startswith("rchar:")).split()[1])


def bytes_table(tmp: Path, gb: float, V: int = 32_000, d: int = 4096) -> None:
    from mptkit._io import load_embeddings
    from tests.fakehub import Blob, HubServer

    made = checkpoints(tmp, gb, V, d)
    tensor = made["tensor"]
    print(f"\nfinding and loading model.embed_tokens.weight ({V:,} x {d} BF16, {tensor / 1e6:.0f} MB) of a")
    print(f"{made['size'] / 1e9:.1f} GB checkpoint (sparse on disk)")
    print(f"  {'':<24}{'find (B)':>11}{'load (B)':>13}{'total (B)':>13}{'bound (B)':>13}{'find (s)':>9}{'load (s)':>9}")

    def row(label, find, load, form, secs):
        folder, head, index = made[form]
        bound = head + index + tensor + SLACK
        ok = "" if find + load <= bound else "  OVER"
        print(f"  {label:<24}{find:>11,}{load:>13,}{find + load:>13,}{bound:>13,}{secs[0]:>9.2f}{secs[1]:>9.2f}{ok}")

    for form in ("whole", "sharded"):
        folder = made[form][0]
        r0, t0 = rchar(), time.perf_counter()
        emb = load_embeddings(folder)
        r1, t1 = rchar(), time.perf_counter()
        emb.load()
        r2, t2 = rchar(), time.perf_counter()
        row(f"{form}, local", r1 - r0, r2 - r1, form, (t1 - t0, t2 - t1))
    with HubServer() as hub:
        os.environ.update(hub.client_env(tmp))
        for form in ("whole", "sharded"):
            folder = made[form][0]
            files = {}
            for p in sorted(folder.iterdir()):
                files[p.name] = Blob.file(p) if p.suffix == ".safetensors" else p.read_bytes()
                if isinstance(files[p.name], Blob):
                    _ = files[p.name].sha256  # the listing's LFS sha256, computed once, before measuring
            hub.commit(f"owner/{form}", files)
            hub.clear()
            t0 = time.perf_counter()
            emb = load_embeddings(f"hf://owner/{form}")
            find, t1 = hub.bytes_sent(r"/resolve/"), time.perf_counter()
            emb.load()
            total, t2 = hub.bytes_sent(r"/resolve/"), time.perf_counter()
            api = hub.bytes_sent() - total
            row(f"{form}, loopback Hub", find, total - find, form, (t1 - t0, t2 - t1))
            print(f"  {'':<24}(and {api:,} bytes of API answers: the commit and the folder's listing)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="mptkit-serve-bench-"))
    if args.quick:
        embeds_table(tmp, B=8, L=128, N=20, d=512, V=4000, T=8, r=4, repeat=args.repeat)
    else:
        embeds_table(tmp, B=32, L=512, N=100, d=4096, V=32_000, T=16, r=8, repeat=args.repeat)
    if args.quick:
        bytes_table(tmp, 1.0, d=1024)
    else:
        bytes_table(tmp, 10.0)


if __name__ == "__main__":
    main()
