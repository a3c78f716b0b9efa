"""PEFT's adapter_config.json fields for prompt tuning, in one table, and how an output's config is
built from them.

The table (:data:`FIELDS`) is read from PEFT's own source of every release from 0.6.0 (the first
with ``MULTITASK_PROMPT_TUNING``) to 0.21.2: the dataclass fields of ``PeftConfigMixin``,
``PeftConfig``, ``PromptLearningConfig`` (``peft/config.py``), ``PromptTuningConfig``
(``peft/tuners/prompt_tuning/config.py``) and ``MultitaskPromptTuningConfig``
(``peft/tuners/multitask_prompt_tuning/config.py``); ``tests/peft_versions/fields_from_wheels.py``
reads them again from the wheels and compares. ``save_pretrained`` writes every field
(``asdict``), and loading builds the config class from every key of the file: PEFT up to 0.13.x
refuses a key it does not know (``TypeError: ... unexpected keyword argument``), 0.14.0 and later
ignore it with a warning. So a config loads cleanly in exactly the releases that know all its keys.

Every list of config fields mptkit uses is derived from the table: the defaults of a version, the
clean initialisation outputs get, the hints a bare file carries in its metadata, the fields only MPT
has, and the fields a user may set (``--task-type`` ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

MPT = "MULTITASK_PROMPT_TUNING"
PT = "PROMPT_TUNING"
BOTH = frozenset({MPT, PT})

#: every PEFT release from MPT's first (PyPI's list, 2026-12); --peft-version takes one of these
RELEASES: tuple[str, ...] = (
    "0.6.0", "0.6.1", "0.6.2", "0.7.0", "0.7.1", "0.8.0", "0.8.1", "0.8.2", "0.9.0", "0.10.0",
    "0.11.0", "0.11.1", "0.12.0", "0.13.0", "0.13.1", "0.13.2", "0.14.0", "0.15.0", "0.15.1", "0.15.2",
    "0.16.0", "0.17.0", "0.17.1", "0.18.0", "0.18.1", "0.19.0", "0.19.1", "0.20.0", "0.21.0", "0.21.1",
    "0.21.2",
)  # fmt: skip
#: the first release that ignores (with a warning) a config key it does not know; older ones refuse it
IGNORES_UNKNOWN = "0.14.0"
#: the first release whose source-task initialisation runs (0.6.0-0.8.2 call ``word_embeddings.device``,
#: which an nn.Embedding does not have: ``AttributeError`` on any AVERAGE/EXACT/ONLY_SOURCE init)
SOURCE_INIT_WORKS = "0.9.0"
#: the first release that reads a ``.safetensors`` prompt_tuning_init_state_dict_path with safetensors;
#: older ones ``torch.load`` every init file, which reads .safetensors only where torch itself does
#: (torch 2.13 does, since pytorch PR 170592)
READS_SAFETENSORS_INIT = "0.11.0"


@dataclass(frozen=True)
class Option:
    """How a user sets a field (``config=`` in the API, this flag in the CLI)."""

    flag: str
    help: str
    kind: type = str
    minimum: int | None = None
    maximum: int | None = None


#: marks a field that outputs do not force to one value
KEEP = object()


@dataclass(frozen=True)
class Field:
    key: str
    #: the adapter types whose config class has it
    types: frozenset
    #: the PEFT release it appeared in, and the first without it (None: still there)
    since: str = "0.6.0"
    until: str | None = None
    #: PEFT's default (the dataclass's)
    default: Any = None
    #: carried in a bare file's ``mptkit.config`` metadata, so that it can become a folder again
    hint: bool = False
    #: the value every adapter mptkit writes has, so that loading it reads no init file and no
    #: tokenizer (a stale TEXT field makes PEFT's config refuse itself); KEEP for the others
    clean: Any = KEEP
    #: how a user sets it, for a source that carries no config
    option: Option | None = None


FIELDS: tuple[Field, ...] = (
    Field("peft_type", BOTH),
    Field(
        "task_type",
        BOTH,
        hint=True,
        option=Option("--task-type", "PEFT task type, needed for an adapter folder when the source has no config."),
    ),
    Field(
        "num_virtual_tokens",
        BOTH,
        hint=True,
        option=Option("--num-virtual-tokens", "Virtual tokens per submodule.", int, 1),
    ),
    Field(
        "num_transformer_submodules",
        BOTH,
        hint=True,
        option=Option(
            "--num-transformer-submodules", "1 (causal LM) or 2 (seq2seq: encoder and decoder halves).", int, 1, 2
        ),
    ),
    Field(
        "base_model_name_or_path",
        BOTH,
        hint=True,
        option=Option("--base-model", "base_model_name_or_path for the adapter config."),
    ),
    Field("num_layers", BOTH, hint=True),
    Field("num_attention_heads", BOTH, hint=True),
    Field("token_dim", BOTH),
    Field("auto_mapping", BOTH),
    Field("revision", BOTH),
    Field("inference_mode", BOTH, default=False),
    Field("prompt_tuning_init", BOTH, default="RANDOM", clean="RANDOM"),
    Field("prompt_tuning_init_text", BOTH, clean=None),
    Field("tokenizer_name_or_path", BOTH, clean=None),
    Field("tokenizer_kwargs", BOTH, since="0.7.0", clean=None),
    Field("prompt_tuning_init_state_dict_path", frozenset({MPT}), clean=None),
    Field("prompt_tuning_init_task", frozenset({MPT}), default=0, clean=0),
    Field("num_ranks", frozenset({MPT}), default=1),
    Field("num_tasks", frozenset({MPT}), default=1),
    Field("modules_to_save", BOTH, since="0.17.0"),
    Field("peft_version", BOTH, since="0.18.0"),  # PEFT fills in its own version when it is None
)

BY_KEY: dict[str, Field] = {f.key: f for f in FIELDS}
#: the fields a bare file keeps in its ``mptkit.config`` metadata
HINT_FIELDS: tuple[str, ...] = tuple(f.key for f in FIELDS if f.hint)
#: what an adapter mptkit writes says about its initialisation (where its PEFT has the field)
CLEAN_INIT: dict[str, Any] = {f.key: f.clean for f in FIELDS if f.clean is not KEEP}
#: fields of MULTITASK_PROMPT_TUNING that PROMPT_TUNING does not have
MPT_ONLY: tuple[str, ...] = tuple(f.key for f in FIELDS if f.types == {MPT})
#: the fields a user may set, and how
OPTIONS: tuple[tuple[str, Option], ...] = tuple((f.key, f.option) for f in FIELDS if f.option)


# -- versions ------------------------------------------------------------------------------------
def parse(version: str) -> tuple[int, ...] | None:
    """``"0.13.2"`` -> (0, 13, 2); a dev or local build (``0.22.0.dev0``, ``0.21.2+abc``) by its
    release numbers; None for anything else."""
    m = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def _v(version: str) -> tuple[int, ...]:
    return parse(version) or (0,)


def check_version(version: str) -> str:
    """``version`` if it is a PEFT release mptkit can write for; else a one-sentence UsageError."""
    v = parse(version)
    if v is not None and v < _v(RELEASES[0]):
        raise UsageError(
            f"--peft-version {version}: PEFT added MULTITASK_PROMPT_TUNING in {RELEASES[0]}; older releases cannot "
            "load any bank"
        )
    if version not in RELEASES:
        raise UsageError(
            f"--peft-version {version!r} is not a PEFT release mptkit knows: expected one of {RELEASES[0]} to "
            f"{RELEASES[-1]} (e.g. 0.13.2)"
        )
    return version


def known_in(field: Field, version: str) -> bool:
    v = _v(version)
    return _v(field.since) <= v and (field.until is None or v < _v(field.until))


def fields_of(version: str, peft_type: str = MPT) -> tuple[str, ...]:
    """The keys PEFT ``version`` writes for ``peft_type`` (a release after the newest known has the
    newest known fields)."""
    return tuple(f.key for f in FIELDS if peft_type in f.types and known_in(f, version))


def defaults(version: str, peft_type: str = MPT) -> dict:
    return {k: BY_KEY[k].default for k in fields_of(version, peft_type)}


def installed_version() -> str | None:
    """The installed PEFT's version, or None (mptkit does not need PEFT)."""
    from importlib import metadata  # here: ~20 ms that inspect and validate never need

    try:
        return metadata.version("peft")
    except metadata.PackageNotFoundError:
        return None


def _writer_version(installed: str | None) -> str:
    """The release whose fields a config without a dialect gets: the installed PEFT's (the newest
    known one for a newer PEFT), else the newest known."""
    v = parse(installed) if installed else None
    if v is None or v < _v(RELEASES[0]):
        return RELEASES[-1]
    return max((r for r in RELEASES if _v(r) <= v), key=_v)


# -- building an output's config -----------------------------------------------------------------
def has_dialect(config: Mapping | None) -> bool:
    """Whether ``config`` is a PEFT adapter_config.json (its fields are what its PEFT writes), not
    the few hints of a bare file or a user's options."""
    return isinstance(config, Mapping) and "peft_type" in config


def build_config(
    source: Mapping | None, required: Mapping, target: str | None = None, *, installed: Any = KEEP
) -> tuple[dict, list[str]]:
    """The adapter_config.json of an output, and the source's fields it dropped.

    ``required``: the fields the operation sets (among them ``peft_type``, the adapter type written,
    and the shapes). ``target``: a PEFT release to write for (``--peft-version``): its fields
    exactly, the source's values where it has them, PEFT's defaults elsewhere, ``peft_version``
    (where it has one) saying that release; the source's fields it does not know are dropped and
    listed. Without ``target``, a source that is an adapter_config.json keeps its own fields (its
    dialect: the PEFT that wrote it loads the output), less those of the other adapter type when the
    type changes, plus those this type adds where the source's PEFT has them, less (and listed) any
    that no release knows unless its peft_version is newer than the table; any other source (a
    bare file's hints, a user's options, nothing) gets what the installed PEFT writes (``installed``,
    looked up by default; the newest known release without one). The clean initialisation
    (:data:`CLEAN_INIT`) applies to the fields the output has."""
    kind = required["peft_type"]
    src = dict(source or {})
    other_only = {f.key for f in FIELDS if kind not in f.types}
    stamp = target
    if target is None and not has_dialect(src):
        installed = installed_version() if installed is KEEP else installed
        target = _writer_version(installed)
        stamp = installed or target  # what that PEFT writes: its own version
    elif target is not None:
        check_version(target)
    dropped: list[str] = []
    if target is not None:
        out, dropped = _release_fields(src, target, kind, stamp)
    else:
        out = {k: v for k, v in src.items() if k not in other_only}
        named = parse(src["peft_version"]) if isinstance(src.get("peft_version"), str) else None
        if named is None or named <= _v(RELEASES[-1]):  # a field no release (up to the source's) writes
            dropped = sorted(k for k in out if k not in BY_KEY)  # would break PEFT < 0.14, warn in later ones
            out = {k: v for k, v in out.items() if k in BY_KEY}
        oldest = max((BY_KEY[k].since for k in out if k in BY_KEY), key=_v, default=RELEASES[0])
        for f in FIELDS:  # after a type change: this type's own fields, where the source's PEFT has them
            if f.types == {kind} and f.key not in out and known_in(f, oldest):
                out[f.key] = f.default
    out.update(required)
    for key, value in CLEAN_INIT.items():
        if key in out:
            out[key] = value
    return dict(sorted(out.items())), dropped  # in the order PEFT writes them


def _release_fields(src: Mapping, release: str, kind: str, stamp: str) -> tuple[dict, list[str]]:
    """The fields PEFT ``release`` writes for ``kind``: ``src``'s values where it has them, PEFT's
    defaults elsewhere, ``peft_version`` saying ``stamp``; and ``src``'s fields it lacks (not those
    of the other adapter type)."""
    keys = fields_of(release, kind)
    out = {k: src[k] if k in src else BY_KEY[k].default for k in keys}
    out["peft_type"] = kind
    if "peft_version" in out:
        out["peft_version"] = stamp
    other_only = {f.key for f in FIELDS if kind not in f.types}
    return out, sorted(k for k in src if k not in keys and k not in other_only)


def for_release(config: Mapping | None, version: str, peft_type: str = MPT) -> tuple[dict, list[str]]:
    """``config`` as PEFT ``version`` writes it (``--peft-version``): exactly that release's fields
    for ``peft_type``, the config's values where it has them (its initialisation too: the writers
    clean it), PEFT's defaults elsewhere; and the fields of ``config`` that release lacks. An
    unknown or too-old release is a one-sentence :class:`UsageError`."""
    check_version(version)
    return _release_fields(dict(config or {}), version, peft_type, version)


def common_dialect(configs: Iterable[Mapping | None]) -> dict | None:
    """One config for an output made of several sources: the first known config, restricted to the
    keys every adapter_config.json among them has (so each source's PEFT knows them all)."""
    configs = [dict(c) for c in configs if c]
    if not configs:
        return None
    out = configs[0]
    for c in configs[1:]:
        if has_dialect(c) and has_dialect(out):
            out = {k: v for k, v in out.items() if k in c}
    return out


def as_type(config: Mapping | None, peft_type: str) -> dict | None:
    """``config`` (of either adapter type) as a config of ``peft_type``: the same dialect, the
    other type's own fields gone, this type's own fields added with PEFT's defaults."""
    if config is None:
        return None
    if not has_dialect(config):
        return dict(config)
    out, _ = build_config(config, {"peft_type": peft_type})
    return out


# -- which PEFT releases load a config -----------------------------------------------------------
def loadable(config: Mapping, peft_type: str = MPT) -> dict:
    """Which releases load ``config``: ``clean`` (the oldest that knows every key; None when a key
    is one no release has), ``needs`` (each key that some release lacks: the release it appeared in,
    or None), and the releases before ``clean`` that ignore the keys they lack with a warning
    (``ignores``) or refuse them (``refuses``), each as [first, last] or None."""
    needs = {}
    for key in config:
        f = BY_KEY.get(key)
        if f is None or peft_type not in f.types or f.until is not None:
            needs[key] = None
        elif _v(f.since) > _v(RELEASES[0]):
            needs[key] = f.since
    needs = dict(sorted(needs.items(), key=lambda kv: (kv[1] is None, _v(kv[1] or "0"), kv[0]), reverse=False))
    clean = None if None in needs.values() else max([RELEASES[0], *needs.values()], key=_v)
    before = [r for r in RELEASES if clean is None or _v(r) < _v(clean)]
    span = lambda rs: [rs[0], rs[-1]] if rs else None
    return {
        "clean": clean,
        "needs": needs,
        "ignores": span([r for r in before if _v(r) >= _v(IGNORES_UNKNOWN)]),
        "refuses": span([r for r in before if _v(r) < _v(IGNORES_UNKNOWN)]),
    }


def loadable_text(info: Mapping) -> str:
    """:func:`loadable`'s answer in one line."""
    unknown = [k for k, v in info["needs"].items() if v is None]
    if info["clean"] is None:
        parts = [f"no PEFT release knows {', '.join(unknown)}"]
    else:
        late = [f"{k} {v}" for k, v in reversed(info["needs"].items())]
        parts = [f"PEFT {info['clean']} and later" + (f" (needs {', '.join(late)})" if late else "")]
    if info["ignores"]:
        parts.append(f"{_span(*info['ignores'])} load it ignoring the fields they lack, with a warning")
    if info["refuses"]:
        parts.append(f"{_span(*info['refuses'])} refuse it (TypeError)")
    return "; ".join(parts)


def _span(a: str, b: str) -> str:
    return a if a == b else f"{a} to {b}"


def _list(keys: list[str]) -> str:
    return ", ".join(keys)


def version_warnings(config: Mapping, peft_type: str = MPT) -> list[str]:
    """What breaks the PEFT release the config's own ``peft_version`` names: each key that release
    does not know (it refuses them before 0.14.0, ignores them with a warning after)."""
    named = config.get("peft_version")
    v = parse(named) if isinstance(named, str) else None
    if v is None or v < _v(RELEASES[0]):
        return []
    release = max((r for r in RELEASES if _v(r) <= v), key=_v)
    keys = set(fields_of(release, peft_type))
    late = [k for k in config if k not in keys]
    if not late:
        return []
    verb = "refuses" if v < _v(IGNORES_UNKNOWN) else "ignores (with a warning)"
    return [
        f"peft_version says {named}, but PEFT {named} {verb} {_list(late)}: a field it does not know; "
        f"'mptkit convert ... --peft-version {release}' writes a config it loads"
    ]


def init_file(safetensors: bool) -> dict:
    """Which releases use a bank file as ``prompt_tuning_init_state_dict_path`` (AVERAGE_SOURCE_TASKS,
    EXACT_SOURCE_TASK, ONLY_SOURCE_SHARED): ``reads`` (with safetensors, or torch.load for a
    pickle), ``torch_load`` (a .safetensors file through torch.load, which only a torch that reads
    .safetensors itself can: 2.13 does), ``broken`` (their source-task initialisation fails whatever
    the file), each [first, last] or None."""
    older = [r for r in RELEASES if _v(r) < _v(SOURCE_INIT_WORKS)]
    works = [r for r in RELEASES if _v(r) >= _v(SOURCE_INIT_WORKS)]
    torch_load = [r for r in works if safetensors and _v(r) < _v(READS_SAFETENSORS_INIT)]
    reads = [r for r in works if r not in torch_load]
    span = lambda rs: [rs[0], rs[-1]] if rs else None
    return {"reads": span(reads), "torch_load": span(torch_load), "broken": span(older)}


def init_file_text(info: Mapping) -> str:
    """:func:`init_file`'s answer in one line."""
    parts = [f"PEFT {info['reads'][0]} and later"]
    if info["torch_load"]:
        parts.append(f"{_span(*info['torch_load'])} only where torch.load reads .safetensors (torch 2.13 does)")
    if info["broken"]:
        parts.append(
            f"{_span(*info['broken'])} cannot use any init file (AttributeError, fixed in {SOURCE_INIT_WORKS})"
        )
    return "; ".join(parts)


def init_file_note(version: str) -> str | None:
    """What PEFT ``version`` does with a ``.safetensors`` bank as its init file, where it is not
    simply read (None there)."""
    v = _v(version)
    if v < _v(SOURCE_INIT_WORKS):
        return (
            f"PEFT {version} cannot use any prompt_tuning_init_state_dict_path (its source-task init fails, fixed in "
            f"{SOURCE_INIT_WORKS}): give it an adapter folder"
        )
    if v < _v(READS_SAFETENSORS_INIT):
        return (
            f"PEFT {version} reads prompt_tuning_init_state_dict_path with torch.load, which reads a .safetensors "
            "file where torch does (torch 2.13 does)"
        )
    return None
