"""The Hugging Face Hub: pull and push prompt banks, ``hf://`` references, remote inspect, model cards.

Transfers go through the ``huggingface_hub`` client (imported here, inside the functions, never at
``import mptkit``), configured as every HF tool is: the endpoint from ``HF_ENDPOINT``, the cache
from ``HF_HUB_CACHE``/``HF_HOME``, the token from ``HF_TOKEN``, the login cache or ``token=``,
``HF_HUB_OFFLINE=1`` for cache-only answers. These are read when a function is called, not when
mptkit is imported. A token is only ever handed to the client: never printed, logged or written.

A reference is ``hf://owner/repo[@revision][/path]`` (``refs/pr/N`` revisions work; a revision
holding other ``/`` must be URL-quoted). Without a path, the repo root holds the bank: an adapter
folder (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``) or a single
``.safetensors`` file. Only the files the bank needs are downloaded, into the HF cache.
"""

from .card import model_card
from .push import push
from .refs import HubRef, cache_dir, endpoint, offline, parse_ref
from .transfer import Fetched, fetch, pull, remote_summary, resolve

__all__ = ["HubRef", "Fetched", "parse_ref", "endpoint", "cache_dir", "offline", "fetch", "resolve", "pull",
           "push", "remote_summary", "model_card"]
