"""What an output path may be, and what ``--force`` may replace.

- :func:`output_kind`: a path ending in ``.safetensors`` is a bank file, a path with no suffix (or
  ending in ``/``) a folder; any other suffix, ``-``, or a near miss of ``.safetensors`` is refused
  with a suggestion. A command that writes other files (an image, a ``.npy`` table) widens the rule
  with ``files=``.
- :func:`check_target`: refuses, before any work, an output that would lose data or cannot be
  written: the working directory or one of its parents, an input (or a path inside or around one),
  a name longer than the file system allows, an existing output without ``force``, a file where a
  folder is wanted (and the reverse), a link, and anything ``force`` must not replace: only a bank
  (a file or folder holding nothing but a bank's files) or an empty folder is ever replaced.
  A folder that cannot be written to is refused here too, so the refusal comes before the work.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .._bank import KEYS
from ..errors import InvalidBank, OutputError

NAME_MAX = 255  # bytes per file name on Linux file systems (pathconf's answer is used where it has one)
BANK_SUFFIX = ".safetensors"
#: output suffixes a bank output takes, and what each writes
BANK_FILES: Mapping[str, str] = {BANK_SUFFIX: "file"}
#: suffixes of other weight formats: refused with a pointer to .safetensors, not to a folder name
WEIGHT_SUFFIXES = (
    ".bin",
    ".pt",
    ".pth",
    ".npy",
    ".npz",
    ".ckpt",
    ".pkl",
    ".pickle",
    ".h5",
    ".gguf",
    ".onnx",
    ".json",
    ".safetensors",
)
#: the files a PEFT adapter folder (or a pulled bank) holds; a folder with anything else is not replaced
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md")

#: ``replaceable(target, folder)`` -> None when ``force`` may replace ``target``, else why not
Replaceable = Callable[[Path, bool], "str | None"]


def output_kind(
    path: str | os.PathLike,
    *,
    files: Mapping[str, str] = BANK_FILES,
    folders: bool = True,
    labels: Mapping[str, str] | None = None,
) -> str:
    """``"folder"``, or the kind ``files`` gives the path's suffix; an :class:`OutputError` with a
    suggestion for anything else (another suffix, ``-``, a near miss of ``.safetensors``).
    ``labels`` says what each kind (and ``"folder"``) is, for the message."""
    text = os.fspath(path)
    shown = os.fsdecode(text)
    if text.startswith("hf://"):
        raise OutputError(f"{shown}: outputs are local paths; use `mptkit push` to upload to the Hub")
    wanted = _wanted(files, folders, labels)
    if text in ("-", ""):
        raise OutputError(f"{shown or repr(text)}: mptkit writes to a path, not to standard output; name {wanted}")
    name = Path(text).name
    if name in ("", ".", "..") and folders:
        return "folder"  # a folder by '.' or '..': check_target says what is wrong with it
    suffix = Path(name).suffix.lower() if not name.endswith(".") else "."
    trailing = text.endswith(("/", os.sep))
    if suffix in files:
        if trailing:
            raise OutputError(
                f"{shown}: a name ending in {suffix} is a file; drop the trailing / for the file, "
                f"or the suffix for a folder"
            )
        return files[suffix]
    if trailing and folders:
        return "folder"
    near = _near_miss(name, files)
    if near:
        raise OutputError(
            f"{shown}: {Path(name).suffix or name!r} looks like a misspelt {near}; "
            f"did you mean {_with_suffix(shown, name, near)}?"
        )
    if suffix == "" and folders:
        return "folder"
    if suffix in WEIGHT_SUFFIXES and BANK_SUFFIX in files:
        hint = f" (did you mean {_with_suffix(shown, name, BANK_SUFFIX)}?)"
    elif folders and suffix not in WEIGHT_SUFFIXES:
        hint = f" (for a folder whose name has a dot, end it with /: {shown}/)"
    else:
        hint = ""
    raise OutputError(f"{shown}: mptkit does not write {suffix} files here; name {wanted}{hint}")


def _wanted(files: Mapping[str, str], folders: bool, labels: Mapping[str, str] | None = None) -> str:
    if not files:
        return "a folder (a path with no suffix): this command writes an adapter folder"
    if labels is None:  # a bank: a .safetensors file or an adapter folder
        labels = {files.get(BANK_SUFFIX): "a bare state dict", "folder": "a PEFT adapter folder"}
    by_kind: dict[str, list[str]] = {}
    for suffix, kind in files.items():
        by_kind.setdefault(kind, []).append(suffix)
    kinds = []
    for kind, suffixes in by_kind.items():
        shown = suffixes[0] if len(suffixes) == 1 else ", ".join(suffixes[:-1]) + " or " + suffixes[-1]
        kinds.append(f"a file ending in {shown}" + (f" ({labels[kind]})" if labels.get(kind) else ""))
    folder = f"a folder with no suffix ({labels['folder']})" if labels.get("folder") else "a folder with no suffix"
    return " or ".join(kinds + ([folder] if folders else []))


def _near_miss(name: str, files: Mapping[str, str]) -> str | None:
    """The suffix of ``files`` that ``name`` almost ends in (``.safetensor``, ``.safetensors.``,
    ``.safetenosrs``, ``x.safetensors.tmp``), else None."""
    low = name.lower()
    for s in files:
        if low.endswith(s):
            continue
        if s in low or low.rstrip(".").endswith(s):
            return s
        suffix = os.path.splitext(low)[1]
        if len(suffix) > 3 and difflib.SequenceMatcher(None, suffix, s).ratio() >= 0.75:
            return s
    return None


def _with_suffix(shown: str, name: str, suffix: str) -> str:
    low = name.lower()
    at = low.find(suffix)
    base = name[:at] if at > 0 else (os.path.splitext(name.rstrip("."))[0] or name)
    return shown[: len(shown) - len(name)] + base + suffix


# -- replacing ---------------------------------------------------------------------------------------
def name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or its nearest existing
    ancestor) allows."""
    try:
        return os.pathconf(_existing_ancestor(Path(folder)), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def os_error_reason(e: OSError) -> str:
    """A reason for a user, from an OSError met while writing."""
    return {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EFBIG: "the file is larger than this process may write (file size limit)",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENAMETOOLONG: "a name in the path is too long for the file system",
    }.get(e.errno, e.strerror or str(e))


def _lstat(target: Path):
    try:
        return os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise OutputError(f"{target}: cannot write the output: {os_error_reason(e)}; nothing was written") from None


# -- identity: what the file system says, not what the path strings say ----------------------------
def _identity(path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` names (links followed), None when nothing is there. Two paths
    that name one file or folder (a bind mount, a hard link, a symbolic link, another case of a name
    on a case-insensitive file system) have one identity."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def _ancestors(path, cache: dict | None = None) -> tuple:
    """The identities of every existing folder above ``path``, nearest first."""
    parent = os.path.dirname(os.path.abspath(path))
    if cache is not None and parent in cache:
        return cache[parent]
    out = []
    p = parent
    while True:
        ident = _identity(p)
        if ident is not None:
            out.append(ident)
        up = os.path.dirname(p)
        if up == p:
            break
        p = up
    if cache is not None:
        cache[parent] = tuple(out)
    return tuple(out)


def _relation(target: Path, me, above: tuple, src: str, cache: dict) -> str | None:
    """How an output (identity ``me``, None if it does not exist; ``above``: the identities of the
    folders above it) relates to the input ``src``: "is", "is inside", "contains", or None. An
    input that does not exist (yet) is compared by its resolved path."""
    real, rs = os.path.realpath(target), os.path.realpath(src)
    if real == rs:
        return "is"
    if real.startswith(rs.rstrip(os.sep) + os.sep):
        return "is inside"
    if rs.startswith(real.rstrip(os.sep) + os.sep):
        return "contains"
    theirs = _identity(src)
    if theirs is None:
        return None
    if me is not None and me == theirs and (os.path.isdir(src) or _same_entry(target, src)):
        return "is"  # one folder, or one folder entry, by another path (a bind mount, another case)
    if theirs in above:
        return "is inside"
    if me is not None and me in _ancestors(src, cache):
        return "contains"
    return None


def _same_entry(a, b) -> bool:
    """Whether two paths that name one file name it by one entry of one folder (seen through a bind
    mount, or by another case of its name on a case-insensitive file system), not by two hard links:
    replacing one hard link leaves the other, and the input, as it was."""
    same_folder = _identity(os.path.dirname(os.path.abspath(a))) == _identity(os.path.dirname(os.path.abspath(b)))
    return same_folder and os.path.basename(a).casefold() == os.path.basename(b).casefold()


def _existing_ancestor(p: Path) -> Path:
    p = Path(os.path.abspath(p))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_target(
    target: Path, *, folder: bool, force: bool, inputs: Iterable[str] = (), replaceable: Replaceable | None = None
) -> None:
    """Refuse outputs that would lose data or cannot be written (see the module docstring).
    ``replaceable`` decides what ``force`` may replace (default :func:`replaceable_output`)."""
    target = Path(target)
    me, above, here = _identity(target), _ancestors(target), _identity(".")
    if me is not None and here is not None and (me == here or me in _ancestors(Path("."))):
        what = "the working directory" if me == here else "a parent of the working directory"
        raise OutputError(f"{target}: is {what}; mptkit never replaces it (name a new folder or file for the output)")
    if target.name in ("", ".", ".."):
        raise OutputError(f"{target}: name the output itself, not a folder by '.' or '..'")
    size, limit = len(os.fsencode(target.name)), name_max(target.parent)
    if size > limit:
        raise OutputError(
            f"{target}: the output's name is {size} bytes long; this file system allows at most "
            f"{limit} bytes per name; nothing was written"
        )
    chains: dict[str, tuple] = {}
    found = [(how, src) for src in inputs if (how := _relation(target, me, above, src, chains))]
    if found:  # the plainest relation first: "is" the folder, rather than "contains" the file inside it
        how, src = min(found, key=lambda x: ("is", "is inside", "contains").index(x[0]))
        raise OutputError(
            f"{target}: the output {how} the input {src}; write to another path (inputs are never modified)"
        )
    st = _lstat(target)
    if st is not None:
        _check_existing(target, st, folder=folder, force=force, replaceable=replaceable or replaceable_output)
    _check_writable(target)


def _check_existing(target: Path, st, *, folder: bool, force: bool, replaceable: Replaceable) -> None:
    if stat.S_ISLNK(st.st_mode):
        if not force:
            raise OutputError(
                f"{target}: already exists (a symbolic link); replacing it needs --force (force=True in Python)"
            )
        raise OutputError(
            f"{target}: is a symbolic link; --force replaces only a bank, never a link, so nothing was "
            "touched (remove the link, or name the path it points to)"
        )
    is_dir = stat.S_ISDIR(st.st_mode)
    if folder and not is_dir:
        raise OutputError(
            f"{target}: exists and is a file, but an adapter-folder output needs a folder "
            "(name a path ending in .safetensors to write a bare file)"
        )
    if not folder and is_dir:
        raise OutputError(f"{target}: exists and is a folder, but a {target.suffix or 'file'} output is a file")
    if not force:
        raise OutputError(f"{target}: already exists; replacing it needs --force (force=True in Python)")
    why = replaceable(target, folder)
    if why:
        raise OutputError(
            f"{target}: exists and {why}; --force replaces only a bank or an empty folder, so nothing "
            "was touched (remove it yourself, or choose another output)"
        )


def replaceable_output(target: Path, folder: bool) -> str | None:
    """None when ``target`` holds only what mptkit writes (an empty folder; a folder of a bank's
    files: ``adapter_config.json``, ``adapter_model.*``, ``README.md``, or one ``.safetensors``
    file; a ``.safetensors`` file holding prompt-bank tensors; a plain file for other outputs such
    as an image), else why ``force`` must not replace it."""
    if folder:
        try:
            entries = sorted(os.listdir(target))
        except OSError as e:
            return f"cannot be listed ({os_error_reason(e)})"
        if not entries:
            return None
        odd = [
            e
            for e in entries
            if not ((e in ADAPTER_FILES or e.endswith(BANK_SUFFIX)) and stat.S_ISREG(os.lstat(target / e).st_mode))
        ]
        if odd:
            shown = ", ".join(e + ("/" if os.path.isdir(target / e) else "") for e in odd[:5])
            more = f" and {len(odd) - 5} more" if len(odd) > 5 else ""
            return f"holds {shown}{more}, which {'is' if len(odd) == 1 else 'are'} not part of a bank"
        if ADAPTER_FILES[0] not in entries and sum(e.endswith(BANK_SUFFIX) for e in entries) != 1:
            return "is not a bank folder (no adapter_config.json)"
        return None
    if not stat.S_ISREG(os.lstat(target).st_mode):
        return "is not a regular file"
    if target.name.lower().endswith(BANK_SUFFIX):
        from ._safetensors import read_header

        try:
            header = read_header(str(target))
        except InvalidBank as e:
            return f"is not a bank mptkit reads ({e.message})"
        other = sorted(k for k in header.tensors if k not in KEYS)
        if other or "prompt_embeddings" not in header.tensors:
            return (
                f"is a safetensors file but not a prompt bank (it holds {', '.join(map(repr, other[:3]))})"
                if other
                else "is a safetensors file without prompt_embeddings, not a prompt bank"
            )
    return None


def _check_writable(target: Path) -> None:
    anc = _existing_ancestor(target.parent)
    if not os.path.isdir(anc):
        raise OutputError(f"{target}: cannot write the output: {anc} is a file, not a folder; nothing was written")
    if not os.access(anc, os.W_OK | os.X_OK):
        try:
            ro = bool(os.statvfs(anc).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):
            ro = False
        reason = "the file system is read-only" if ro else f"permission denied (cannot create files in {anc})"
        raise OutputError(f"{target}: cannot write the output: {reason}; nothing was written")


# -- names that become paths ---------------------------------------------------------------------
#: what a file or folder name made from a task name may hold (anything else is replaced)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@,-]*")
#: the longest folder name made from a task name, in bytes (file systems allow 255)
SAFE_NAME_BYTES = 128


def safe_names(names: list[str], fallback: str = "task{}") -> list[str]:
    """A file or folder name for each of ``names`` that can only ever name one entry inside the
    output: a name is kept when it is already such a name (letters, digits and ``._+=@,-``, not
    starting with a dot, at most :data:`SAFE_NAME_BYTES` bytes, no other name equal to it ignoring
    case); any other name (``../x``, ``/etc``, ``a/b``, an empty one, a control character) gets
    ``fallback.format(index)``, so no task name ever chooses a path."""
    lower: dict[str, int] = {}
    for n in names:
        lower[n.lower()] = lower.get(n.lower(), 0) + 1

    def kept(n: str) -> bool:
        return (
            _SAFE_NAME.fullmatch(n) is not None
            and len(n.encode("utf-8")) <= SAFE_NAME_BYTES
            and lower[n.lower()] == 1
            and n.lower() != "tasks.json"
        )

    keep = [kept(n) for n in names]
    taken = {n.lower() for n, k in zip(names, keep) if k}
    out = []
    for i, n in enumerate(names):
        if keep[i]:
            out.append(n)
            continue
        name, j = fallback.format(i), 2
        while name.lower() in taken:
            name, j = f"{fallback.format(i)}-{j}", j + 1
        taken.add(name.lower())
        out.append(name)
    return out
