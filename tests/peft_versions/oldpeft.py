"""The PEFT side of the PEFT-versions matrix (``matrix.py``): runs under any PEFT from 0.6.0 with
only torch, transformers and PEFT installed (no mptkit, no pytest); everything it exchanges with
mptkit is files on disk.

    python oldpeft.py save WORK KIND      # PEFT saves two banks of a tiny KIND model (causal, seq2seq)
    python oldpeft.py check WORK KIND     # load every folder WORK/KIND/plan.json lists, compare logits

``save`` writes ``WORK/KIND/bank`` (and ``bank2``, another shared prompt) with this PEFT's
``save_pretrained`` (its default serialization: 0.6.x writes adapter_model.bin) and ``meta.json``
(the shapes and versions). ``check`` reads ``plan.json`` (written by the matrix after mptkit ran):
for each adapter folder, ``PeftModel.from_pretrained`` must load it with no warning about unknown
config keys, and its logits with ``task_ids`` must equal, bit for bit, those of the source bank's
tasks they came from (computed here, by this PEFT, from the source's tensors in a model built from an
independent config); each init file must work as ``prompt_tuning_init_state_dict_path`` where this
PEFT's source-task initialisation works (0.9.0 and later). It writes ``result.json`` and exits 1 on
any failure.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from pathlib import Path

import peft
import torch
import transformers

T, R, V = 3, 2, 5  # tasks, rank, virtual tokens of the banks saved here
TASK_TYPE = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


def release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("+")[0].split(".")[:3] if x.isdigit())


def base_model(kind: str):
    """A tiny transformers model built from a config (the same weights on every call)."""
    torch.manual_seed(1234)
    if kind == "seq2seq":
        from transformers import T5Config, T5ForConditionalGeneration

        cfg = T5Config(
            vocab_size=96,
            d_model=24,
            d_kv=6,
            d_ff=48,
            num_layers=1,
            num_decoder_layers=1,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
        return T5ForConditionalGeneration(cfg).eval()
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=96, n_embd=24, n_layer=1, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1)
    return GPT2LMHeadModel(cfg).eval()


# -- save ------------------------------------------------------------------------------------------
def save(work: Path, kind: str) -> None:
    from peft import MultitaskPromptTuningConfig, get_peft_model

    out = work / kind
    out.mkdir(parents=True, exist_ok=True)
    for name, seed in (("bank", 0), ("bank2", 1)):
        cfg = MultitaskPromptTuningConfig(task_type=TASK_TYPE[kind], num_virtual_tokens=V, num_tasks=T, num_ranks=R)
        model = get_peft_model(base_model(kind), cfg)
        enc = model.prompt_encoder["default"]
        g = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():  # distinct, non-trivial values (PEFT's own init is N(0, 0.02))
            enc.embedding.weight.copy_(torch.randn(enc.embedding.weight.shape, generator=g))
            scale = 1 + torch.arange(T)[:, None, None]
            enc.prefix_task_cols.copy_(torch.randn(enc.prefix_task_cols.shape, generator=g) * scale)
            enc.prefix_task_rows.copy_(torch.randn(enc.prefix_task_rows.shape, generator=g) / 3)
        model.save_pretrained(str(out / name))  # this version's default serialization
    meta = {
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "files": sorted(p.name for p in (out / "bank").iterdir()),
        "config": json.loads((out / "bank" / "adapter_config.json").read_text()),
        "shapes": {k: list(v.shape) for k, v in tensors(out / "bank").items()},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"saved {kind} banks with PEFT {peft.__version__} (transformers {transformers.__version__}): {meta['files']}")


# -- check -----------------------------------------------------------------------------------------
def tensors(folder: Path) -> dict:
    """The tensors of an adapter folder or a bare file, read with safetensors (or torch.load)."""
    p = Path(folder)
    if p.is_dir():
        st = p / "adapter_model.safetensors"
        p = st if st.exists() else p / "adapter_model.bin"
    if p.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(p))
    return torch.load(str(p), map_location="cpu", weights_only=True)


def reference(kind: str, pe, cols, rows):
    """This PEFT's MPT model with these tensors, from a config written here (not the folder's)."""
    from peft import MultitaskPromptTuningConfig, get_peft_model

    cfg = MultitaskPromptTuningConfig(
        task_type=TASK_TYPE[kind], num_virtual_tokens=V, num_tasks=cols.shape[0], num_ranks=cols.shape[2]
    )
    model = get_peft_model(base_model(kind), cfg).eval()
    model.prompt_encoder["default"].load_state_dict(
        {"embedding.weight": pe, "prefix_task_cols": cols, "prefix_task_rows": rows}
    )
    return model


def inputs(kind: str, n: int) -> dict:
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(2, 96, (n, 6), generator=g)
    mask = torch.ones_like(ids)
    if n > 1:
        mask[-1, :2] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if kind == "seq2seq":
        out["labels"] = ids[:, :3].clone()
    return out


def mpt_out(model, kind: str, task_ids, what="logits"):
    with torch.no_grad():
        res = model(**inputs(kind, len(task_ids)), task_ids=torch.tensor(task_ids))
    return getattr(res, what)


def load(kind: str, folder: Path):
    """PeftModel.from_pretrained, failing on any warning about keys this PEFT does not know."""
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base_model(kind), str(folder)).eval()
    unknown = [str(w.message)[:160] for w in caught if "nexpected keyword" in str(w.message)]
    if unknown:
        raise AssertionError(f"PEFT warned: {unknown[0]}")
    return model


def online(kind: str, init: str, path: str, task: int = 0):
    """This PEFT's own source-task initialisation from an init file (a one-task model)."""
    from peft import MultitaskPromptTuningConfig, get_peft_model

    cfg = MultitaskPromptTuningConfig(
        task_type=TASK_TYPE[kind],
        num_virtual_tokens=V,
        num_tasks=1,
        num_ranks=R,
        prompt_tuning_init=init,
        prompt_tuning_init_state_dict_path=path,
        prompt_tuning_init_task=task,
    )
    return get_peft_model(base_model(kind), cfg).eval()


def check(work: Path, kind: str) -> int:
    root = work / kind
    plan = json.loads((root / "plan.json").read_text())
    init_works = release(peft.__version__) >= (0, 9, 0)
    sources, results = {}, []

    def source(name):
        if name not in sources:
            t = tensors(root / plan["sources"][name])
            sources[name] = (t, reference(kind, t["prompt_embeddings"], t["prefix_task_cols"], t["prefix_task_rows"]))
        return sources[name]

    def average(name):
        """AVERAGE_SOURCE_TASKS as this PEFT computes it: online from the source's own file where
        its source-task init works, else PEFT's formula (the factors' means) by hand."""
        if init_works:
            folder = root / plan["sources"][name]
            return online(kind, "AVERAGE_SOURCE_TASKS", str(folder / weights(folder)))
        t, _ = source(name)
        cols, rows = t["prefix_task_cols"].mean(0, keepdim=True), t["prefix_task_rows"].mean(0, keepdim=True)
        return reference(kind, t["prompt_embeddings"], cols, rows)

    def same(a, b, what):
        if not torch.equal(a, b):
            raise AssertionError(f"{what} differ (max |diff| {float((a - b).abs().max()):.3g})")

    for item in plan["checks"]:
        name = item["name"]
        try:
            note = run_check(item, kind, root, source, average, same, init_works)
            results.append({"name": name, "ok": True, "note": note})
        except Exception as e:  # one line per failure; the matrix prints them
            results.append({"name": name, "ok": False, "note": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
            if "--debug" in sys.argv:
                traceback.print_exc()
    (root / "result.json").write_text(json.dumps({"peft": peft.__version__, "results": results}, indent=1))
    for r in results:
        print(f"  {'ok  ' if r['ok'] else 'FAIL'} {kind:8} {r['name']}: {r['note']}")
    return 0 if all(r["ok"] for r in results) else 1


def mean_model(kind, src, got, peft_average, same):
    """The model of the source's average as mptkit makes it: the shared prompt, and each factor's
    mean over the tasks computed exactly (float64) and rounded once, so each element is at least as
    close to the exact mean as this PEFT's own average (which sums in float32) and often closer."""
    same(got["prompt_embeddings"], src["prompt_embeddings"], "shared prompts")
    enc = peft_average.prompt_encoder["default"]
    for key, theirs in (("prefix_task_cols", enc.prefix_task_cols), ("prefix_task_rows", enc.prefix_task_rows)):
        exact = src[key].double().mean(0, keepdim=True)
        same(got[key], exact.to(src[key].dtype), f"{key} (the correctly rounded mean)")
        if not torch.all((got[key].double() - exact).abs() <= (theirs.detach().double() - exact).abs()):
            raise AssertionError(f"{key}: farther from the exact mean than PEFT's own average")
    return reference(kind, src["prompt_embeddings"], got["prefix_task_cols"], got["prefix_task_rows"])


def weights(folder: Path) -> str:
    return "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "adapter_model.bin"


def run_check(item, kind, root, source, average, same, init_works) -> str:
    what = item["check"]
    path = root / item["path"]
    if what == "read":  # mptkit's bare copy of the bank holds exactly what this PEFT loads from it
        enc = load(kind, root / item["bank"]).prompt_encoder["default"]
        t = tensors(path)
        same(t["prompt_embeddings"], enc.embedding.weight.detach(), "prompt_embeddings")
        same(t["prefix_task_cols"], enc.prefix_task_cols.detach(), "prefix_task_cols")
        same(t["prefix_task_rows"], enc.prefix_task_rows.detach(), "prefix_task_rows")
        return "mptkit read every tensor as PEFT loads it"
    if what == "folder":  # an MPT adapter folder: task j is the source's task tasks[j]
        model = load(kind, path)
        tasks = item["tasks"]
        if item.get("expect") == "average":
            want = mpt_out(
                mean_model(kind, source(item["source"])[0], tensors(path), average(item["source"]), same), kind, [0]
            )
        elif item.get("expect") in ("self", "shared"):  # new factors: this PEFT's model of the folder's tensors
            t = tensors(path)
            if item["expect"] == "shared":
                same(t["prompt_embeddings"], source(item["source"])[0]["prompt_embeddings"], "shared prompts")
            ref = reference(kind, t["prompt_embeddings"], t["prefix_task_cols"], t["prefix_task_rows"])
            want = mpt_out(ref, kind, tasks)
        else:
            want = mpt_out(source(item["source"])[1], kind, tasks)
        got = mpt_out(model, kind, list(range(len(tasks))))
        same(got, want, "logits")
        return f"loads; logits of {len(tasks)} task(s) bit for bit"
    if what == "prompt":  # a PROMPT_TUNING folder: what MPT gives task k
        model = load(kind, path)
        k = item["tasks"][0]
        ref = source(item["source"])[1]
        if kind == "causal":
            with torch.no_grad():
                got = model(**inputs(kind, 2)).logits
            same(got, mpt_out(ref, kind, [k, k]), "logits")
            return "loads; logits = MPT's with task_ids bit for bit"
        with torch.no_grad():  # seq2seq: PROMPT_TUNING puts the encoder half in front, as MPT's generate does
            got = model(**inputs(kind, 2)).encoder_last_hidden_state
        same(got, mpt_out(ref, kind, [k, k], "encoder_last_hidden_state"), "encoder states")
        return "loads; encoder states = MPT's with task_ids bit for bit"
    if what == "loadable":  # what the table predicts for this config: clean, warns, refuses
        from peft import PeftModel

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                PeftModel.from_pretrained(base_model(kind), str(path))
                found = "warns" if any("nexpected keyword" in str(w.message) for w in caught) else "clean"
            except TypeError as e:
                if "unexpected keyword argument" not in str(e):
                    raise
                found = "refuses"
        if found != item["expect"]:
            raise AssertionError(f"mptkit's table says this PEFT {item['expect']} it, but it {found}")
        return f"{found}, as inspect says"
    if what == "init":  # a bare file as prompt_tuning_init_state_dict_path
        init = item["init"]
        if not init_works:
            try:
                online(kind, init, str(path))
            except AttributeError as e:  # PEFT 0.6-0.8's own bug, as inspect says
                return f"cannot: this PEFT's source-task init fails whatever the file ({e})"
            raise AssertionError("expected PEFT < 0.9's AttributeError, but the init worked")
        model = online(kind, init, str(path), item.get("task", 0))
        if init == "ONLY_SOURCE_SHARED":
            got = model.prompt_encoder["default"].embedding.weight.detach()
            same(got, source(item["source"])[0]["prompt_embeddings"], "shared prompts")
            return "read as ONLY_SOURCE_SHARED: the shared prompt bit for bit"
        if init == "AVERAGE_SOURCE_TASKS":  # a one-task file: PEFT's average of it is itself
            ref = mean_model(kind, source(item["source"])[0], tensors(path), average(item["source"]), same)
            same(mpt_out(model, kind, [0]), mpt_out(ref, kind, [0]), "logits")
            return "read as AVERAGE_SOURCE_TASKS: logits = those of the source's mean factors bit for bit"
        same(mpt_out(model, kind, [0]), mpt_out(source(item["source"])[1], kind, item["tasks"]), "logits")
        return f"read as {init}: logits = the source task's bit for bit"
    raise ValueError(f"unknown check {what!r}")


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] not in ("save", "check"):
        sys.exit(f"usage: {sys.argv[0]} save|check WORK KIND[,KIND]")
    cmd, work, kinds = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(",")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # old transformers on new torch
    if cmd == "save":
        for kind in kinds:
            save(work, kind)
    else:
        sys.exit(max(check(work, kind) for kind in kinds))
