"""Serve one task of an MPT prompt bank on vLLM (v0.10 or later) through prompt embeddings.

vLLM removed prompt adapters in v0.10; it takes prompt embeddings instead. For a causal LM, a task's
request is the task's prompt (as PEFT computes it) followed by the embeddings of the request's
tokens: ``mptkit.serve.PromptEmbedder`` builds exactly the tensor PEFT feeds the model, reading only
the base model's input-embedding matrix (and, from the Hub, only its byte range).

Online (an OpenAI-compatible server started with ``--enable-prompt-embeds``)::

    vllm serve meta-llama/Llama-3.2-1B --enable-prompt-embeds
    python examples/serve_vllm.py bank/ hf://meta-llama/Llama-3.2-1B --task sst2 --text "A gripping film."

Offline (``LLM(..., enable_prompt_embeds=True)`` in this process)::

    python examples/serve_vllm.py bank/ path/to/Llama-3.2-1B --task sst2 --offline

``--dry-run`` builds everything up to the engine call and prints it as JSON (the test suite runs it
that way: vLLM is not installed there).
"""

from __future__ import annotations

import argparse
import json
import urllib.request

from mptkit.serve import PromptEmbedder


def tokenize(embedder: PromptEmbedder, text: str) -> list[int]:
    """The base model's token ids for ``text``, with its own tokenizer.json (tokenizers library)."""
    from tokenizers import Tokenizer

    path = embedder.embeddings.tokenizer()
    if path is None:
        raise SystemExit(f"{embedder.embeddings.where}: no tokenizer.json to tokenize the request with")
    return Tokenizer.from_file(path).encode(text).ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bank", help="any bank mptkit reads (a folder, a .safetensors file, hf://...)")
    p.add_argument("model", help="the base model: a folder, model.safetensors, an index, or hf://owner/model")
    p.add_argument("--task", default="0", help="the task's index or name")
    p.add_argument("--text", default="w5 w17 w42", help="the request's text")
    p.add_argument("--server", default="http://localhost:8000", help="the vLLM server (online mode)")
    p.add_argument("--served-model", help="the model name the server serves (default: MODEL)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--offline", action="store_true", help="run vLLM in this process instead of calling a server")
    p.add_argument("--dry-run", action="store_true", help="print what would be sent, call no engine")
    args = p.parse_args()

    task = int(args.task) if args.task.isdigit() else args.task
    embedder = PromptEmbedder.from_pretrained(args.bank, args.model)
    ids = tokenize(embedder, args.text)
    body = embedder.vllm_request(
        task, ids, model=args.served_model or args.model, max_tokens=args.max_tokens, temperature=0.0
    )
    prompt = embedder.vllm_prompt(task, ids)

    if args.dry_run:
        x = prompt["prompt_embeds"]
        print(
            json.dumps({"input_ids": ids, "request": body, "offline": {"shape": list(x.shape), "dtype": str(x.dtype)}})
        )
        return
    if args.offline:
        from vllm import LLM, SamplingParams

        llm = LLM(model=args.model, enable_prompt_embeds=True)
        out = llm.generate(prompt, SamplingParams(max_tokens=args.max_tokens, temperature=0.0))
        print(out[0].outputs[0].text)
        return
    req = urllib.request.Request(
        args.server.rstrip("/") + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        print(json.load(r)["choices"][0]["text"])


if __name__ == "__main__":
    main()
