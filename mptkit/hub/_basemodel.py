"""A base model's input embedding from the Hub, by range requests: ``hf://owner/model[@rev][/path]``.

The revision is resolved to a commit once; the model's folder is listed; ``config.json`` (and, for a
sharded checkpoint, ``model.safetensors.index.json``) are downloaded whole and verified, as every
small file is; then only the header of the safetensors file that holds the input embedding is read
(:meth:`~mptkit.hub._remote.RemoteFile.header`), and the tensor's bytes are read by range when
rows are asked for (:class:`~mptkit.formats._embeddings.InputEmbeddings`). So finding and loading
the matrix moves the header, the tensor and a few kB more (the config, the header probe's
overshoot), whatever the checkpoint's size. ``tokenizer.json`` is downloaded (verified) only when
asked for. A file a full download already put in the HF cache is read there; with
``HF_HUB_OFFLINE=1`` the cached snapshot is the only source.
"""

from __future__ import annotations

import os
import posixpath

from ..errors import HubError, InvalidModel
from ..formats import _checkpoints as checkpoints, _embeddings as emb
from . import _cache as cache, _client as client, _http as http
from ._refs import HubRef, offline, parse_ref
from ._remote import RemoteFile, Where
from ._transfer import Listed, download, listing, resolve_commit


def open_embeddings(
    ref: str | HubRef, *, key: str | None = None, token: str | None = None, limits: http.Limits | None = None
) -> emb.InputEmbeddings:
    """The input embedding of the model at ``ref`` (see the module doc)."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    shown = str(r)
    if offline():
        return _from_snapshot(r, shown, key)
    lim = limits or http.limits()
    with http.limited(lim):
        commit = resolve_commit(r, token)
        folder, named = r.path, None
        files, folders = listing(r, commit, posixpath.dirname(r.path) if r.path else "", token)
        if r.path and r.path in files:
            folder, named = posixpath.dirname(r.path), r.path
        elif r.path and r.path not in folders:
            raise HubError(f"{r}: no file or folder '{r.path}' in {r.repo_id} at revision {r.revision or 'main'}")
        elif r.path:
            files, _ = listing(r, commit, r.path, token)
        at = lambda name: posixpath.join(folder, name) if folder else name
        get = lambda f: download(r, commit, f, token)
        config = None
        if at(emb.CONFIG_NAME) in files:
            f = files[at(emb.CONFIG_NAME)]
            if f.size > emb.MAX_CONFIG_BYTES:
                raise InvalidModel(f"{shown}: {f.name} is listed at {f.size:,} bytes, not a model's config; refused")
            config = emb.read_config(_path(get(f)), str(HubRef(r.repo_id, r.revision, f.name)))
        weights, index = _weights(r, files, folder, named)
        opened = [f.name for f in (files.get(at(emb.CONFIG_NAME)),) if f is not None and config is not None]
        if index is not None:
            if index.size > checkpoints.MAX_INDEX_BYTES:
                raise InvalidModel(
                    f"{shown}: {index.name} is listed at {index.size:,} bytes, more than the "
                    f"{checkpoints.MAX_INDEX_BYTES:,} an index of the largest models needs; refused"
                )
            shards = checkpoints.read_index(_path(get(index)))
            k, why = emb.choose_key(shards.weight_map, config, str(HubRef(r.repo_id, r.revision, index.name)), key)
            weights = files.get(at(shards.weight_map[k]))
            if weights is None:
                raise InvalidModel(
                    f"{shown}: {index.name} names {shards.weight_map[k]} as the shard holding {k!r}, but the repo "
                    "does not list that file"
                )
            opened.append(index.name)
        else:
            k = None
        shown_file = str(HubRef(r.repo_id, r.revision, weights.name))
        local = cache.cached(r, commit, weights.name, weights.digest) if weights.digest else None
        if local is not None and os.path.getsize(local) == weights.size:
            header = _local_header(local)
        else:
            header = RemoteFile(Where(r, commit, weights.name, weights.size, weights.sha256, token), lim).header()
        if k is None:
            k, why = emb.choose_key(header.tensors, config, shown_file, key)
        elif k not in header.tensors:
            raise InvalidModel(f"{shown}: the index names {weights.name} as holding {k!r}, but that shard does not")
        opened.append(weights.name)
        tok = files.get(at(emb.TOKENIZER_NAME))
    cache.remember(r.repo_id, r.revision or "main", commit)
    array = emb.checked(header.array(k), k, config, shown_file)

    def tokenizer() -> str | None:
        if tok is None:
            return None
        if tok.size > emb.MAX_TOKENIZER_BYTES:
            raise InvalidModel(
                f"{shown}: {tok.name} is listed at {tok.size:,} bytes, more than the "
                f"{emb.MAX_TOKENIZER_BYTES:,} a tokenizer.json has; refused"
            )
        with http.limited(http.limits()):
            return get(tok)

    return emb.InputEmbeddings(array, k, why, shown, shown_file, config, tokenizer=tokenizer, opened=opened)


def _path(p: str):
    from pathlib import Path

    return Path(p)


def _local_header(path: str):
    from ..formats import _safetensors as st

    return st.read_header(path)


def _weights(r: HubRef, files: dict[str, Listed], folder: str, named: str | None) -> tuple[Listed, Listed | None]:
    """The safetensors file to read, or the index of a sharded checkpoint."""
    at = lambda name: posixpath.join(folder, name) if folder else name
    if named is not None:
        f = files[named]
        if named.endswith(".index.json"):
            return f, f
        if not named.lower().endswith(".safetensors"):
            raise InvalidModel(
                f"{r}: names {named}, which is not a safetensors checkpoint (mptkit reads the input embedding "
                "by byte range from .safetensors files, or from the shards an index lists)"
            )
        return f, None
    if at(emb.INDEX_NAME) in files:
        return files[at(emb.INDEX_NAME)], files[at(emb.INDEX_NAME)]
    if at(emb.WEIGHTS_NAME) in files:
        return files[at(emb.WEIGHTS_NAME)], None
    here = sorted(n for n in files if posixpath.dirname(n) == folder)
    bare = [n for n in here if n.lower().endswith(".safetensors")]
    if len(bare) == 1:
        return files[bare[0]], None
    raise InvalidModel(
        client.said(
            f"{r}: no {emb.WEIGHTS_NAME} or {emb.INDEX_NAME} here (found: "
            f"{', '.join(posixpath.basename(n) for n in here[:8]) or 'nothing'}); mptkit reads the input "
            "embedding from safetensors checkpoints",
            limit=None,
        )
    )


def _from_snapshot(r: HubRef, shown: str, key: str | None) -> emb.InputEmbeddings:
    """Offline: the cached snapshot of ``r``'s revision, read as a local model folder."""
    rev = r.revision or "main"
    commit = cache.commit_for(r.repo_id, rev)
    if not commit or not cache.snapshot_names(r.repo_id, commit):
        raise HubError(
            f"{shown}: HF_HUB_OFFLINE is set and the local cache holds no copy of {r.repo_id} at revision {rev}; "
            "fetch it once while online"
        )
    snapshot = cache.pointer(r.repo_id, commit, "x").parent
    local = snapshot.joinpath(*r.path.split("/")) if r.path else snapshot
    out = emb.open_local(local, key=key)
    out.where = shown
    return out
