"""``pull`` and ``push``."""

from __future__ import annotations

import click

from .app import adapter_option, config_options, emit_json, json_option, main, say


def hub_options(f):
    f = click.option("-q", "--quiet", is_flag=True,
                     help="No progress bars (they are off anyway without a terminal).")(f)
    f = click.option("--token", metavar="TOKEN", help="Hugging Face token (default: HF_TOKEN or the login cache).")(f)
    return f


@main.command()
@click.argument("repo", metavar="REPO[@REV]")
@click.option("-o", "--output", type=click.Path(), help="Copy the bank into this plain folder (default: keep it in the HF cache).")
@click.option("--force", is_flag=True, help="Replace an existing --output folder.")
@click.option("--revision", help="Branch, tag or commit (default: main).")
@hub_options
@json_option
def pull(repo, output, force, revision, token, quiet, as_json):
    """Download the bank in REPO (owner/repo or hf://owner/repo[@rev][/path]), validate it, and say where it is.

    Only the bank's files are fetched: adapter_config.json with adapter_model.safetensors (or .bin),
    or a single .safetensors file.

    \b
      mptkit pull owner/bank
      mptkit pull owner/bank@v1 -o bank/
    """
    from ..hub import pull as run
    from ..info import summary
    from ..render import one_line

    bank, got = run(repo, output, revision=revision, force=force, token=token, quiet=quiet)
    local = got.path if output is None else bank.source.path
    s = summary(bank)
    if as_json:
        emit_json({"ref": str(got.ref), "repo": got.ref.repo_id, "revision": got.ref.revision or "main",
                   "commit": got.commit, "path": local, "files": got.files, "from_cache_only": got.cached_only,
                   "summary": s})
        return
    how = " from the local cache (offline)" if got.cached_only else ""
    say(f"pulled {got.ref} (commit {got.commit[:12]}){how} into {local}" + (" (the HF cache)" if output is None else ""))
    say(f"  {one_line(s)}")


@main.command()
@click.argument("src")
@click.argument("repo", metavar="REPO")
@click.option("--private", is_flag=True, help="Create the repo as private (an existing repo keeps its visibility).")
@click.option("--revision", help="Branch to commit to (created from main if missing).")
@click.option("-m", "--message", help="Commit message.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@config_options
@adapter_option
@hub_options
@json_option
def push(src, repo, private, revision, message, create_pr, config, adapter, token, quiet, as_json):
    """Upload SRC to the model repo REPO (owner/repo) as a PEFT adapter folder with a model card.

    The bank is validated first. An adapter folder is uploaded byte for byte; a bare .safetensors file
    is written as an adapter folder first (its config must be known: --task-type, --num-virtual-tokens).

    \b
      mptkit push bank/ owner/my-bank
      mptkit push bank.safetensors owner/my-bank --task-type SEQ_2_SEQ_LM --num-virtual-tokens 10 --private
    """
    from ..io import load
    from ..hub import push as run

    bank = load(src, adapter=adapter).with_config(config)
    out = run(bank, repo, private=private, revision=revision, message=message, create_pr=create_pr, token=token,
              quiet=quiet)
    if as_json:
        emit_json(out)
        return
    if out["pr_url"]:
        say(f"opened a pull request on {out['repo']}: {out['pr_url']}")
    elif out["changed"]:
        say(f"pushed {src} to {out['repo']}@{out['revision']} (commit {out['commit'][:12]}): "
                   f"{', '.join(out['files'])}")
    else:
        say(f"{out['repo']}@{out['revision']} already holds this bank and card (commit "
                   f"{str(out['commit'])[:12]}); nothing to push")
