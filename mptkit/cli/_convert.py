"""``convert``."""

from __future__ import annotations

import click

from ._app import bank_json, echo_repairs, emit_json, for_peft, main, say
from ._opts import adapter_option, config_options, dtype_option, json_option, output_options


@main.command()
@click.argument("src")
@dtype_option("Cast the tensors (default: as stored, bit for bit).")
@config_options
@adapter_option
@output_options
@json_option
def convert(src, dtype, clamp, config, adapter, output, force, peft_version, as_json):
    """Write any bank mptkit reads as a PEFT adapter folder or a bare .safetensors bank.

    SRC may be a whole-model state dict (model.safetensors, torch.save of a PeftModel, a DeepSpeed
    {"module": ...} pickle), a sharded folder, a prompt encoder's state dict, a Trainer checkpoint or
    a folder of named adapters (--adapter NAME). With --peft-version X an adapter folder gets the
    config PEFT X writes (the tensors keep their bytes).

    \b
      mptkit convert run/checkpoint-500 -o bank/
      mptkit convert model.safetensors --task-type CAUSAL_LM --num-virtual-tokens 10 -o bank/
      mptkit convert mp_rank_00_model_states.pt --adapter default -o bank.safetensors
      mptkit convert bank/ --peft-version 0.13.2 -o bank-peft0.13/
    """
    from .._convert import convert as run
    from .._io import load, plan

    bank, dropped = for_peft(load(src, adapter=adapter), peft_version)
    target = plan(output, "bank", force=force, like=bank.with_config(config))  # before the work
    out = run(bank, dtype=dtype, config=config, clamp=clamp)
    path = target.write(out)
    if as_json:
        emit_json(bank_json(out, path))
        return
    shape = f"N={out.num_tokens}, d={out.token_dim}" + ("" if out.shared_only else f", T={out.num_tasks}, r={out.rank}")
    what = "a PEFT adapter folder" if target.folder else "a bare .safetensors bank"
    say(f"wrote {path}: {src} ({bank.source.format}) as {what} ({shape}, {out.dtype})")
    echo_repairs(out, target, peft_version, dropped)
