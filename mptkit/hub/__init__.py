"""The Hugging Face Hub: pull and push prompt banks, ``hf://`` references, remote reads, model cards.

Transfers go through the ``huggingface_hub`` client (imported here, inside the functions, never at
``import mptkit``), configured as every HF tool is: the endpoint from ``HF_ENDPOINT``, the cache
from ``HF_HUB_CACHE``/``HF_HOME``, the token from ``HF_TOKEN``, the login cache or ``token=``,
``HF_HUB_OFFLINE=1`` for cache-only answers. These are read when a function is called, not when
mptkit is imported. A token is only ever handed to the client: never printed, logged or written.
Everything a server sends is untrusted: no server-chosen string becomes a local path, every
downloaded file is checked against the checksum the Hub lists for it, and every transfer runs
under a deadline and a no-progress timeout (:mod:`mptkit.hub._http`).

A reference is ``hf://owner/repo[@revision][/path]`` (``refs/pr/N`` revisions work; a revision
holding other ``/`` must be URL-quoted). Without a path, the repo root holds the bank: an adapter
folder (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``) or a single
``.safetensors`` file. Only the bytes a command needs are transferred (:mod:`mptkit.hub._load`).

    refs      references and settings         http      limits on every request
    wire      sockets, decoding, credentials
    client    the client, its errors          cache     the HF cache, written safely
    remote    range reads of a file           transfer  listings, whole-file downloads
    load      open, pull, remote inspect      card      the model card
    push      uploads
"""

from ._card import model_card
from ._load import open_bank, partial, pull, remote_summary, resolve
from ._push import push
from ._refs import HubRef, cache_dir, endpoint, offline, parse_ref
from ._transfer import Fetched, fetch

__all__ = [
    "HubRef",
    "Fetched",
    "parse_ref",
    "endpoint",
    "cache_dir",
    "offline",
    "fetch",
    "resolve",
    "open_bank",
    "partial",
    "pull",
    "push",
    "remote_summary",
    "model_card",
]
