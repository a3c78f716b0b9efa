"""What a PyTorch checkpoint may cost, found before torch unpickles it (:mod:`mptkit.formats._pickle`).

- :func:`zip_members`: a zip checkpoint's member count and central directory size from its end
  record (O(1), before Python's zipfile reads a single entry), then its members (none compressed,
  a pickle of sane size) and where each member's bytes start.
- :func:`scan`: the pickle program, run by Python's C unpickler with every global it names replaced
  by an inert stand-in (:class:`_Scan`: nothing is imported or called), counting the storages and
  tensors it would make (refused past :data:`MAX_MEMBERS`) and noting, for each tensor, which
  storage it views. torch's own weights-only unpickler is pure Python (about 0.5 s a MB of pickle);
  this pass is about ten times faster and holds one small object per tensor.
- :func:`attach`: each tensor torch described on the meta device gets the storage it views, so its
  bytes are read from that member of the file (:func:`mptkit.formats._pickle.array`).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass

from ..errors import InvalidBank

#: most bytes of a pickle program (a whole model's is tens to hundreds of kB: ~150 bytes a tensor);
#: torch's weights-only unpickler runs in Python, about 0.5 s a MB
MAX_PICKLE_BYTES = 4_000_000
#: most members of a zip checkpoint, and most storages and tensors of a pickle (one member a
#: storage; a whole model has a few thousand)
MAX_MEMBERS = 50_000
#: most bytes of a zip checkpoint's central directory (a member's entry: 46 bytes, its name, extras)
MAX_DIRECTORY_BYTES = MAX_MEMBERS * 256
#: the bytes of each element of torch's storage types (the pickle names a storage by its type)
STORAGE_ITEMSIZE = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "UntypedStorage": 1,
    "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
}


# -- the zip archive -----------------------------------------------------------------------------------
@dataclass
class Members:
    """A zip checkpoint's storage members: ``key -> (header offset, size)``, and the archive's
    byte order; :meth:`data` finds where a member's bytes start."""

    path: str
    storages: dict[str, tuple[int, int]]
    pickle_name: str
    big_endian: bool = False

    def data(self, key: str) -> tuple[int, int] | None:
        """(offset of the bytes, size) of storage ``key``'s member, or None when there is none."""
        found = self.storages.get(key)
        if found is None:
            return None
        header, size = found
        try:
            with open(self.path, "rb") as f:
                local = os.pread(f.fileno(), 30, header)
                end = os.fstat(f.fileno()).st_size
        except OSError as e:
            raise InvalidBank(
                f"{self.path}: cannot read the input any more ({e.strerror or e}); was it moved or deleted?"
            ) from None
        if len(local) == 30 and local[:4] != b"PK\x03\x04":
            raise InvalidBank(
                f"{self.path}: the zip member of storage {key!r} has no local header; the archive is corrupt"
            )
        start = header + 30 + sum(struct.unpack("<HH", local[26:30])) if len(local) == 30 else end + 1
        if start + size > end:
            raise InvalidBank(
                f"{self.path}: the file ended early: it changed while being read (its zip directory promised "
                f"storage {key!r} at bytes {header:,} to {header + 30 + size:,}, the file now has {end:,})"
            )
        return start, size


def zip_members(path: str, size: int) -> Members:
    """The checks a zip checkpoint passes before anything in it is read (see the module doc)."""
    _check_end_record(path, size)
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            pkl = next((i for i in infos if i.filename.endswith("data.pkl")), None)
            order = z.read(pkl.filename.rsplit("/", 1)[0] + "/byteorder") if pkl and _has(z, pkl, "byteorder") else b""
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise InvalidBank(
            f"{path}: not a readable PyTorch checkpoint: the zip archive is corrupt ({first_sentence(str(e))})"
        ) from None
    if len(infos) > MAX_MEMBERS:
        raise InvalidBank(
            f"{path}: the zip archive has {len(infos):,} members, more than the {MAX_MEMBERS:,} mptkit reads"
        )
    storages = {}
    prefix = pkl.filename[: -len("data.pkl")] + "data/" if pkl else None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise InvalidBank(
                f"{path}: member {info.filename[:80]!r} is compressed ({info.compress_size:,} bytes that would inflate "
                f"to {info.file_size:,}); torch.save stores every member uncompressed, and mptkit does not inflate "
                "archives (save the checkpoint again with torch.save)"
            )
        if info.filename.endswith(".pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise _pickle_too_big(path, info.file_size, f"its pickle {info.filename[:80]!r}")
        if prefix and info.filename.startswith(prefix):
            storages[info.filename[len(prefix) :]] = (info.header_offset, info.file_size)
    if pkl is None:
        raise InvalidBank(f"{path}: not a PyTorch checkpoint: the zip archive holds no data.pkl")
    return Members(path, storages, pkl.filename, order.strip() == b"big")


def _has(z: zipfile.ZipFile, pkl, name: str) -> bool:
    try:
        z.getinfo(pkl.filename.rsplit("/", 1)[0] + "/" + name)
        return True
    except KeyError:
        return False


def _check_end_record(path: str, size: int) -> None:
    """The member count and central directory size an archive's end record states (zip64's where
    it has one), refused above the caps before Python's zipfile parses any entry."""
    with open(path, "rb") as f:
        f.seek(max(0, size - (1 << 16) - 22))
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise InvalidBank(
                f"{path}: the file ends early: its zip archive has no end record (a truncated download? "
                "download it again)"
            )
        count, directory = struct.unpack("<HI", tail[at + 10 : at + 16])
        if (count == 0xFFFF or directory == 0xFFFFFFFF) and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
            (where,) = struct.unpack("<Q", tail[at - 12 : at - 4])
            f.seek(where)
            record = f.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                count, directory = struct.unpack("<QQ", record[32:48])
    if count > MAX_MEMBERS:
        raise InvalidBank(f"{path}: the zip archive has {count:,} members, more than the {MAX_MEMBERS:,} mptkit reads")
    if directory > MAX_DIRECTORY_BYTES:
        raise InvalidBank(
            f"{path}: the zip archive's directory is {directory:,} bytes, more than the {MAX_DIRECTORY_BYTES:,} "
            f"mptkit reads ({MAX_MEMBERS:,} members)"
        )


# -- the pickle program ------------------------------------------------------------------------------
class _Global:
    """What the scan makes of any global a pickle names: called, it returns another; it accepts
    any state and items, so a program always runs to its end."""

    def __init__(self, *args, **kw):
        self.args = args

    def __call__(self, *args, **kw):
        return _Global(*args)

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


@dataclass(frozen=True)
class StorageRef:
    key: str
    itemsize: int | None
    numel: int
    location: str


@dataclass(frozen=True)
class TensorRef:
    """A tensor of the pickle: the storage it views (None for a tensor saved with no storage)."""

    storage: StorageRef | None


class _Scan(pickle.Unpickler):
    """The C unpickler, with every global an inert stand-in (see the module doc)."""

    def __init__(self, f, where: str):
        super().__init__(f)
        self.where, self.storages, self.tensors = where, set(), 0

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._tensor
        if module == "torch._utils" and name == "_rebuild_meta_tensor_no_storage":
            return self._no_storage
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return lambda data, *rest: data
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        return _Global

    def _count(self) -> None:
        self.tensors += 1
        if self.tensors > MAX_MEMBERS:
            raise InvalidBank(
                f"{self.where}: its pickle makes more than {MAX_MEMBERS:,} tensors, more than mptkit reads "
                "(a whole model's has a few thousand)"
            )

    def _tensor(self, storage, *args):
        self._count()
        return TensorRef(storage if isinstance(storage, StorageRef) else None)

    def _no_storage(self, *args):
        self._count()
        return TensorRef(None)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            return _Global()
        kind, key, location, numel = pid[1], str(pid[2]), str(pid[3]), pid[4]
        self.storages.add(key)
        if len(self.storages) > MAX_MEMBERS:
            raise InvalidBank(
                f"{self.where}: its pickle names more than {MAX_MEMBERS:,} storages, more than mptkit reads "
                "(a whole model's has a few thousand)"
            )
        itemsize = STORAGE_ITEMSIZE.get(kind.name) if isinstance(kind, _StorageType) else None
        return StorageRef(key, itemsize, numel if isinstance(numel, int) else -1, location)


class _StorageType:
    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kw):
        return _Global()


class _Capped(io.RawIOBase):
    """A file that refuses to give more than ``limit`` bytes in all (a pickle's size is not known
    before it is read, for a legacy checkpoint)."""

    def __init__(self, f, limit: int, where: str):
        self.f, self.left, self.where, self.limit = f, limit, where, limit

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(memoryview(b)[: max(0, min(len(b), self.left + 1))])
        self.left -= n
        if self.left < 0:
            raise _pickle_too_big(self.where, None, "its pickle")
        return n


def scan(path: str, members: Members | None):
    """Run the pickle program of ``path`` (a zip checkpoint's ``data.pkl``, or a legacy file's
    pickles) through :class:`_Scan`: the caps are enforced; for a zip checkpoint, the object it
    builds (dicts, lists, :class:`TensorRef` leaves), or None when the program does something the
    scan cannot follow (torch then has the last word)."""
    try:
        if members is not None:
            with zipfile.ZipFile(path) as z, z.open(members.pickle_name) as f:
                return _Scan(io.BufferedReader(_Capped(f, MAX_PICKLE_BYTES, path)), path).load()
        with open(path, "rb") as raw:
            f = io.BufferedReader(_Capped(raw, MAX_PICKLE_BYTES, path))
            for _ in range(4):  # magic number, protocol, system info, then the objects
                _Scan(f, path).load()
        return None
    except InvalidBank:
        raise
    except Exception:  # anything the stand-ins cannot follow: torch.load judges the file
        return None


def attach(obj, found, wrappers) -> bool:
    """Give each tensor of the dicts mptkit reads in ``obj`` (torch's meta tensors) the
    :class:`StorageRef` of the same place in ``found`` (the scan's object), as ``_mptkit_storage``.
    False when a tensor has no counterpart (torch then loads the file's data itself)."""
    import torch

    todo, depth = [(obj, found)], 0
    while todo and depth < 3:
        nxt = []
        for d, s in todo:
            if not isinstance(d, dict) or not isinstance(s, dict):
                continue
            for k, v in d.items():
                if isinstance(v, torch.Tensor):
                    ref = s.get(k)
                    if not isinstance(ref, TensorRef):
                        return False
                    v._mptkit_storage = ref.storage
                elif k in wrappers:
                    nxt.append((v, s.get(k)))
        todo, depth = nxt, depth + 1
    return True


def _pickle_too_big(path: str, size: int | None, what: str) -> InvalidBank:
    found = f" is {size:,} bytes," if size is not None else " is"
    return InvalidBank(
        f"{path}: {what}{found} more than the {MAX_PICKLE_BYTES:,} bytes of pickle mptkit unpickles (a whole "
        "model's is tens to hundreds of kB)"
    )


def first_sentence(text: str) -> str:
    """The first line of an exception message, up to its first sentence end, at most 160 characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    cut = line.find(". ")
    return (line[: cut + 1] if cut > 0 else line)[:160]
