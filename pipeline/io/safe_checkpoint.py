"""Loading PyTorch (Lightning) checkpoints without executing code from them: ``torch.load``
with a restricted unpickler that admits tensors and plain containers and refuses code.

Globals that exist to run code, touch the system or unpickle further data are refused
(:class:`UnsafeCheckpointError`); other unknown globals (e.g. OmegaConf configs) load as inert
placeholders that only record what the pickle gave them.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import io
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch


class UnsafeCheckpointError(Exception):
    """The checkpoint references a global that could execute code; names the refused global."""

    def __init__(self, global_name: str, reason: str = "could execute code") -> None:
        self.global_name = global_name
        super().__init__(f"refused to unpickle global {global_name!r} ({reason})")


class CheckpointFormatError(ValueError):
    """The checkpoint was read but does not hold a usable STEGO model (one-line message)."""


class Inert:
    """Instance of a global that is not allow-listed: records what the pickle gives it.

    Nothing of the original class is ever imported or called; construction (REDUCE, NEWOBJ,
    INST/OBJ), state (BUILD) and container items (APPENDS/SETITEMS) are only stored.
    """

    _pickle_global = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        obj = object.__new__(cls)
        object.__setattr__(obj, "_inert_args", args)
        object.__setattr__(obj, "_inert_state", None)
        object.__setattr__(obj, "_inert_items", {})
        object.__setattr__(obj, "_inert_list", [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept any constructor arguments; already recorded by ``__new__``."""

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "_inert_state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._inert_items[key] = value

    def append(self, value: Any) -> None:
        """Record a list item (APPEND)."""
        self._inert_list.append(value)

    def extend(self, values: Any) -> None:
        """Record list items (APPENDS)."""
        self._inert_list.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self._pickle_global}>"


_INERT_TYPES: dict[str, type[Inert]] = {}


def _inert_type(qualname: str) -> type[Inert]:
    """A placeholder class standing in for the global ``qualname`` (one per name)."""
    if qualname not in _INERT_TYPES:
        short = qualname.rsplit(".", 1)[-1] or "Global"
        _INERT_TYPES[qualname] = type(f"Inert_{short}", (Inert,), {"_pickle_global": qualname})
    return _INERT_TYPES[qualname]


def _rebuild_tensor(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` minus hooks and autograd state from the file."""
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("tensor without a storage")
    if not isinstance(metadata, dict):
        metadata = None
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, size, stride, False, collections.OrderedDict(), metadata
    )


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """A saved ``nn.Parameter`` comes back as its plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter without tensor data")
    return data.detach()


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """How protocol-2 pickles store ``bytes``; only the latin-1 form is accepted."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("_codecs.encode", "only latin-1 bytes are accepted")
    return obj.encode("latin-1")


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects), only for placeholder classes."""
    if isinstance(cls, type) and issubclass(cls, Inert):
        return cls.__new__(cls)
    raise UnsafeCheckpointError("copyreg._reconstructor", f"of {cls!r}")


# Globals that are really returned (all side-effect free whatever their arguments).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    **{
        ("builtins", n): getattr(builtins, n)
        for n in (
            "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str",
            "bool", "bytes", "bytearray", "slice", "range", "object",
        )
    },
}  # fmt: skip


# torch.float32 & co. (read from the module dict: no lazy submodule import is triggered).
_TORCH_DTYPES = {n: v for n, v in vars(torch).items() if isinstance(v, torch.dtype)}


# Modules whose globals are refused outright (they exist to run code, touch the system or
# unpickle further data). Anything else that is not allow-listed becomes an inert placeholder.
_DENIED_MODULES = (
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "builtins", "importlib",
    "runpy", "code", "codeop", "pty", "shutil", "socket", "ctypes", "cffi", "marshal", "pickle",
    "_pickle", "copyreg", "dill", "cloudpickle", "joblib", "types", "functools", "_functools",
    "operator", "_operator", "inspect", "pdb", "bdb", "webbrowser", "multiprocessing",
    "threading", "_thread", "asyncio", "signal", "tempfile", "urllib", "http", "requests",
    "ftplib", "smtplib", "telnetlib", "zipimport", "pkgutil", "imp", "site", "sysconfig", "io",
    "_io", "codecs", "_codecs", "platform", "gc", "weakref", "ast", "timeit", "trace", "profile",
    "cProfile", "torch.hub", "torch.jit", "torch.ops", "torch._ops", "torch.classes",
    "torch._classes", "torch.package", "torch.serialization", "torch.utils.cpp_extension",
    "torch._C", "torch.library", "torch._dynamo", "torch._inductor", "torch.fx",
    "torch.distributed", "torch.multiprocessing", "torch.testing", "numpy.testing",
    "numpy.lib.npyio", "pydoc", "yaml",
)  # fmt: skip


# Names refused in any module.
_DENIED_NAMES = frozenset(
    {
        "eval", "exec", "execfile", "compile", "system", "popen", "Popen", "spawn", "call",
        "check_call", "check_output", "run", "getoutput", "getstatusoutput", "__import__",
        "import_module", "getattr", "setattr", "delattr", "globals", "locals", "vars", "open",
        "load", "loads", "apply", "partial", "attrgetter", "methodcaller", "breakpoint",
        "input", "exit", "kill", "remove", "unlink", "rmtree", "runstring", "run_path",
        "run_module", "execv", "execve", "execvp", "fork", "forkpty", "startfile",
    }
)  # fmt: skip


def _classify_global(module: str, name: str) -> Any:
    """Return the allowed object, a placeholder class, or raise UnsafeCheckpointError."""
    if (module, name) in _compat_pickle.NAME_MAPPING:  # python 2 names in protocol < 3
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    qualname = f"{module}.{name}"
    if (module, name) in _ALLOWED:
        return _ALLOWED[(module, name)]
    if module == "torch" and name in _TORCH_DTYPES:
        return _TORCH_DTYPES[name]
    if any(module == m or module.startswith(m + ".") for m in _DENIED_MODULES):
        raise UnsafeCheckpointError(qualname)
    if name.rsplit(".", 1)[-1] in _DENIED_NAMES or name.startswith("__"):
        raise UnsafeCheckpointError(qualname)
    if module == "torch" and name in ("load", "save", "compile", "from_file"):
        raise UnsafeCheckpointError(qualname)
    return _inert_type(qualname)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only tensors/storages, plain containers and inert placeholders.

    Admitted for real: ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, scalar builtins,
    ``bytes`` (latin-1 ``_codecs.encode``), ``collections.OrderedDict``, ``torch.Size``,
    ``torch.device``, torch dtypes, ``torch._utils._rebuild_tensor_v2`` and ``_rebuild_parameter``
    (wrapped so backward hooks and grad flags from the file are dropped); storages are resolved by
    torch's own ``find_class`` wrapper before reaching this class. Refused with
    :class:`UnsafeCheckpointError`: globals of execution/system/deserialisation modules
    (``os``, ``subprocess``, ``builtins.eval``, ``functools.partial``, ``torch.jit`` ...) and
    names such as ``system``/``eval``/``getattr`` in any module. Every other global (OmegaConf
    ``DictConfig``, Lightning ``AttributeDict``, ``typing.Any``, ...) becomes an :class:`Inert`
    placeholder: nothing is imported and nothing is called.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        return _classify_global(str(module), str(name))


class _RestrictedPickleModule:
    """The ``pickle_module`` handed to ``torch.load``: only the loading half of ``pickle``."""

    __name__ = "pipeline.io.safe_checkpoint._RestrictedPickleModule"
    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file: BinaryIO, **kwargs: Any) -> Any:
        """Unpickle one object from ``file`` with the restricted unpickler."""
        return _RestrictedUnpickler(file, **kwargs).load()

    @staticmethod
    def loads(data: bytes, **kwargs: Any) -> Any:
        """Unpickle one object from bytes with the restricted unpickler."""
        return _RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


def _refuse_code_archives(f: BinaryIO) -> None:
    """Refuse TorchScript zips (torch.load would run them through torch.jit) and legacy tars."""
    f.seek(0)
    head = f.read(4)
    f.seek(0)
    if head == b"PK\x03\x04":
        if not zipfile.is_zipfile(f):
            raise CheckpointFormatError("damaged zip archive (truncated?)")
        f.seek(0)
        with zipfile.ZipFile(f) as zf:
            names = zf.namelist()
        records: list[str] = [n.split("/", 1)[-1] for n in names]
        try:  # torch's own zip reader, as torch.load will see the archive
            f.seek(0)
            records += list(torch._C.PyTorchFileReader(f).get_all_records())
        except (AttributeError, RuntimeError):
            pass
        f.seek(0)
        if any(r == "constants.pkl" or r.startswith("code/") for r in records):
            raise UnsafeCheckpointError("torch.jit (TorchScript archive)", "holds code")
        return
    if tarfile.is_tarfile(f):
        raise CheckpointFormatError("legacy tar checkpoint format is not supported")
    f.seek(0)


def safe_load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a .ckpt admitting only tensors and plain containers; raise UnsafeCheckpointError
    otherwise.

    Non-allow-listed harmless globals (e.g. OmegaConf configs) load as inert placeholders.
    Other failures (unreadable or damaged file) raise the loader's own exception.
    """
    with open(path, "rb") as f:
        _refuse_code_archives(f)
        obj = torch.load(
            f,
            map_location="cpu",
            weights_only=False,
            pickle_module=_RestrictedPickleModule,
            mmap=False,
        )
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"top-level object is {type(obj).__name__}, not a dict")
    return obj
