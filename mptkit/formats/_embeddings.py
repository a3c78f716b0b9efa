"""A base model's input-embedding matrix, read alone: the one tensor of a whole checkpoint that
serving prompts (:mod:`mptkit.serve`) and reading them (``mptkit explain``) need.

A base model is a folder (``config.json`` + ``model.safetensors``, or a sharded
``model.safetensors.index.json``), a ``model.safetensors`` file or a sharded index; on the Hub,
:mod:`mptkit.hub._basemodel` opens ``hf://owner/model[@rev]`` by range requests with the same rules.
The tensor is found by the model's config (its architecture, ``tie_word_embeddings``) and the names
transformers saves it under (:data:`KNOWN_KEYS`); only that tensor's shard is opened, only its
header is parsed, and its bytes stay on disk as an :class:`~mptkit._tensor.Array` until rows are
asked for: the rows of a request's token ids, or a block of the vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._dtypes import FLOAT_CODES
from .._tensor import Array
from ..errors import InvalidModel
from . import _checkpoints as checkpoints, _safetensors as st

CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = checkpoints.SAFETENSORS_INDEX
#: most bytes of a config.json read (real ones are a few kB)
MAX_CONFIG_BYTES = 1 << 20
#: largest tokenizer.json read (real ones are 1-30 MB)
MAX_TOKENIZER_BYTES = 256 << 20

#: where transformers saves the input embedding, most specific first (the first one present wins)
KNOWN_KEYS = (
    "model.embed_tokens.weight",  # Llama, Mistral, Qwen, Phi-3, Gemma, OLMo, Granite, ...
    "transformer.wte.weight",  # GPT-2, GPT-J, CodeGen, StarCoder
    "transformer.word_embeddings.weight",  # BLOOM, Falcon
    "gpt_neox.embed_in.weight",  # GPT-NeoX, Pythia
    "model.decoder.embed_tokens.weight",  # OPT
    "shared.weight",  # T5, mT5, Flan-T5 (encoder and decoder share it)
    "model.shared.weight",  # BART, mBART, Pegasus
    "transformer.embedding.word_embeddings.weight",  # ChatGLM
    "model.language_model.embed_tokens.weight",  # multimodal wrappers (transformers 5)
    "language_model.model.embed_tokens.weight",  # multimodal wrappers (transformers 4)
    "embed_tokens.weight",  # base models saved without their head
    "wte.weight",
    "word_embeddings.weight",
    "embed_in.weight",
    "embeddings.word_embeddings.weight",  # BERT-like encoders
)
#: name endings that mark an input embedding under a prefix not listed above
KEY_ENDINGS = (".embed_tokens.weight", ".wte.weight", ".word_embeddings.weight", ".embed_in.weight", ".shared.weight")
#: the output embedding, which is the input embedding when the config ties them
TIED_KEY = "lm_head.weight"
#: model types whose embedding layer scales its output (by sqrt(hidden size)) inside the model
SCALED_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma4", "vaultgemma", "t5gemma", "t5gemma2")


@dataclass
class InputEmbeddings:
    """The (vocabulary, hidden) input-embedding matrix of a base model, not yet read."""

    array: Array
    key: str  # the tensor's name in its file
    why: str  # how it was chosen, for the user
    where: str  # the base model as the user named it
    file: str  # the file holding the tensor (a path, or an hf:// reference)
    config: dict | None = None
    #: the path of the model's tokenizer.json (fetched on first call for a model on the Hub), or None
    tokenizer: Callable[[], str | None] = field(default=lambda: None, repr=False)
    #: the files read to find the tensor (config, index, the shard's header), for notes
    opened: list[str] = field(default_factory=list)
    _loaded: object = field(default=None, repr=False)

    @property
    def vocab_size(self) -> int:
        return self.array.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.array.shape[1]

    @property
    def dtype(self) -> str:
        return self.array.dtype

    @property
    def model_type(self) -> str | None:
        return _field(self.config, "model_type")

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(_field(self.config, "is_encoder_decoder"))

    def load(self):
        """The whole matrix as a torch tensor (read once, then kept)."""
        if self._loaded is None:
            self._loaded = self.array.to_torch()
        return self._loaded

    def mapped(self):
        """The matrix as a torch tensor over a copy-on-write memory map of its file (nothing is read
        until rows are indexed, and then only their pages), or None for a tensor not in one local
        file (on the Hub). Measured: a request's 512 rows cost one ``index_select`` this way, against
        one ``pread`` per distinct row through the :class:`~mptkit._tensor.Array` handle."""
        if self._loaded is not None:
            return self._loaded
        segs = self.array.segments
        if len(segs) != 1 or segs[0].path is None:
            return None
        import numpy as np
        import torch

        name = {"F32": "float32", "F16": "float16", "F64": "float64", "BF16": "uint16"}[self.dtype]
        m = np.memmap(segs[0].path, dtype=name, mode="c", offset=segs[0].offset, shape=self.array.shape)
        t = torch.from_numpy(m)
        self._loaded = t.view(torch.bfloat16) if self.dtype == "BF16" else t
        return self._loaded

    def rows(self, ids: Sequence[int]):
        """The rows ``ids`` (any order, repeats allowed) as a (len(ids), hidden) torch tensor in the
        stored dtype: each distinct row is read once (from the kept or mapped matrix, if
        :meth:`load` or :meth:`mapped` ran)."""
        import torch

        idx = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size):
            bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
            raise InvalidModel(
                f"token id {bad} is outside {self.where}'s input embedding ({self.vocab_size} rows, ids 0 to "
                f"{self.vocab_size - 1})"
            )
        if self._loaded is not None:
            return self._loaded.index_select(0, idx)
        uniq, inverse = torch.unique(idx, return_inverse=True)
        got = self.array.rows(uniq.tolist()).to_torch()
        return got if uniq.numel() == idx.numel() and torch.equal(uniq, idx) else got.index_select(0, inverse)

    def rows_into(self, ids, out) -> None:
        """Write the rows ``ids`` (a 1-D long tensor) into ``out`` (len(ids), hidden), cast to its
        dtype: straight from the kept or mapped matrix where the dtypes agree (one gather, no
        intermediate copy), else through :meth:`rows`."""
        import torch

        mat = self._loaded
        if mat is None or mat.dtype != out.dtype or out.device != mat.device:
            out.copy_(self.rows(ids))
            return
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            self.rows(ids)  # raises, naming the id
        torch.index_select(mat, 0, ids, out=out)

    def block(self, start: int, stop: int):
        """Rows ``start`` to ``stop`` (one contiguous read: one range request on the Hub)."""
        if self._loaded is not None:
            return self._loaded[start:stop]
        return self.array.rows(range(start, stop)).to_torch()


def _field(config: dict | None, name: str):
    """A config field, also from a multimodal model's ``text_config``."""
    if not isinstance(config, dict):
        return None
    if config.get(name) is not None:
        return config[name]
    text = config.get("text_config")
    return text.get(name) if isinstance(text, dict) else None


def hidden_size_of(config: dict | None) -> int | None:
    for name in ("hidden_size", "n_embd", "d_model"):
        v = _field(config, name)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def read_config(path: Path, shown: str | None = None) -> dict | None:
    """``config.json`` as a dict (None when there is none)."""
    if not path.exists():
        return None
    obj = checkpoints.read_json_file(path, shown, max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(obj, dict):
        raise InvalidModel(f"{shown or path}: expected a JSON object (a model's config), found a {type(obj).__name__}")
    return obj


# -- which tensor ------------------------------------------------------------------------------
def choose_key(names: Iterable[str], config: dict | None, where: str, key: str | None = None) -> tuple[str, str]:
    """The input embedding's name among the tensor ``names`` and why it was chosen; ``key`` names
    it outright. An :class:`InvalidModel` naming what was looked for when none is there, or the
    candidates when several are."""
    names = list(names)
    present = set(names)
    arch = ", ".join(_field(config, "architectures") or []) or _field(config, "model_type") or "the model"
    if key is not None:
        if key not in present:
            raise InvalidModel(f"{where}: no tensor named {key!r} (it holds {_some(names)})")
        return key, f"{key} (named by --embedding-key)"
    for k in KNOWN_KEYS:
        if k in present:
            return k, f"{k} (the input embedding of {arch}, by the name transformers saves it under)"
    ends = [n for n in names if n.endswith(KEY_ENDINGS) and not _one_side(n)]
    if len(ends) == 1:
        return ends[0], f"{ends[0]} (the only tensor named like an input embedding)"
    if len(ends) > 1:
        raise InvalidModel(
            f"{where}: several tensors look like an input embedding ({_some(ends)}); name one with "
            "--embedding-key (embedding_key= in Python)"
        )
    if TIED_KEY in present and _field(config, "tie_word_embeddings"):
        return TIED_KEY, f"{TIED_KEY} (config.json ties the input and output embeddings)"
    raise InvalidModel(
        f"{where}: no input-embedding tensor: none of {', '.join(KNOWN_KEYS[:6])}, ... is there (it holds "
        f"{_some(names)}); name it with --embedding-key (embedding_key= in Python)"
    )


def _one_side(name: str) -> bool:
    """An encoder's or decoder's own copy of a shared embedding (``encoder.embed_tokens.weight``)."""
    return f".{name}".count(".encoder.") + f".{name}".count(".decoder.") > 0


def _some(names: list[str], n: int = 4) -> str:
    if not names:
        return "no tensors"
    shown = ", ".join(repr(x[:80]) for x in names[:n])
    return shown + (f" and {len(names) - n:,} more" if len(names) > n else "")


def checked(array: Array, key: str, config: dict | None, where: str) -> Array:
    """``array`` if it can be the input embedding (2-D, floating point, as wide as the config's
    hidden size); else an :class:`InvalidModel`."""
    if len(array.shape) != 2 or not all(array.shape):
        raise InvalidModel(
            f"{where}: tensor {key!r} has shape {list(array.shape)}; an input embedding is (vocabulary, hidden)"
        )
    if array.dtype not in FLOAT_CODES:
        raise InvalidModel(
            f"{where}: tensor {key!r} is {array.dtype} (a quantized checkpoint?); mptkit reads input "
            f"embeddings stored as {', '.join(FLOAT_CODES)}"
        )
    d = hidden_size_of(config)
    if d is not None and array.shape[1] != d:
        raise InvalidModel(
            f"{where}: tensor {key!r} is {array.shape[1]} wide but config.json says the hidden size is {d}; "
            "name the input embedding with --embedding-key"
        )
    return array


# -- local files -------------------------------------------------------------------------------
def open_local(path: str | os.PathLike, *, key: str | None = None) -> InputEmbeddings:
    """The input embedding of the base model at ``path``: a folder, a ``.safetensors`` file or a
    sharded ``*.safetensors.index.json`` (see the module doc)."""
    shown = os.fspath(path)
    p = Path(shown)
    if not p.exists():
        raise InvalidModel(f"{shown}: no such file or folder (expected a base model: a folder with config.json)")
    folder = p if p.is_dir() else p.parent
    config = read_config(folder / CONFIG_NAME)
    opened = [str(folder / CONFIG_NAME)] if config is not None else []
    if p.is_dir():
        if (p / INDEX_NAME).exists():
            p = p / INDEX_NAME
        elif (p / WEIGHTS_NAME).exists():
            p = p / WEIGHTS_NAME
        else:
            listed = sorted(x.name for x in folder.iterdir())
            bare = [n for n in listed if n.endswith(".safetensors")]
            if len(bare) == 1:
                p = folder / bare[0]
            else:
                raise InvalidModel(
                    f"{shown}: no {WEIGHTS_NAME} or {INDEX_NAME} in the folder (found: "
                    f"{', '.join(listed[:8]) or 'nothing'}); mptkit reads the input embedding from "
                    "safetensors checkpoints (a .bin pickle has no byte ranges: convert it with save_pretrained)"
                )
    if p.name.lower().endswith(".index.json"):
        shards = checkpoints.read_index(p)
        k, why = choose_key(shards.weight_map, config, str(p), key)
        shard = folder / shards.weight_map[k]
        header = st.read_header(str(shard))
        if k not in header.tensors:
            raise InvalidModel(f"{p}: names {shard.name} as the shard holding {k!r}, but that shard does not hold it")
        opened += [str(p), str(shard)]
        file = str(shard)
    elif p.suffix.lower() == ".safetensors":
        header = st.read_header(str(p))
        k, why = choose_key(header.tensors, config, str(p), key)
        opened.append(str(p))
        file = str(p)
    else:
        raise InvalidModel(
            f"{shown}: not a base model mptkit reads (expected a folder, a .safetensors file or a "
            f"{INDEX_NAME}); a .bin pickle has no byte ranges: convert it with save_pretrained"
        )
    array = checked(header.array(k), k, config, file)
    tok = folder / TOKENIZER_NAME
    return InputEmbeddings(
        array,
        k,
        why,
        shown,
        file,
        config,
        tokenizer=lambda: str(tok) if tok.is_file() else None,
        opened=opened,
    )
