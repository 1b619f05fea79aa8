"""Loaded by a bench's sip-edge (PYTHONPATH=bench/memhook) when CC_BENCH_MEMDUMP names a file prefix.

SIGUSR2 writes `<prefix>-<n>.json`: live objects by type (count and shallow bytes from
gc.get_objects(); functions and bound methods by their code), sippy's UAs by state with the deep
size of each attribute, tracemalloc's total, glibc's mallinfo2
and pymalloc's totals; when tracemalloc is on
(PYTHONTRACEMALLOC) the snapshot `<prefix>-<n>.tm`; then `<prefix>-<n>.done`. SIGUSR1 runs
gc.collect() and malloc_trim(0) and writes `<prefix>-collected.json`. Nothing in the edge knows
about this module; bench/edge_memory.py reads what it writes.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
import tempfile
import tracemalloc
import types
from typing import Any

_FUNCTION, _METHOD = types.FunctionType, types.MethodType
_PREFIX = os.environ.get("CC_BENCH_MEMDUMP", "")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _mallinfo() -> dict[str, int]:
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {name: int(getattr(info, name)) for name, _ in _MallInfo2._fields_}


def _pymalloc() -> dict[str, int]:
    """pymalloc's own totals (sys._debugmallocstats, which writes to the C stderr): bytes in blocks in
    use, in free blocks of used pools, in empty pools, and lost to headers and quantization."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    totals: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("#") and "=" in line:
            name, value = line[1:].split("=", 1)
            if name.strip().endswith("unused pools"):   # "# bytes in 12 unused pools"
                name = "bytes in unused pools"
            try:
                totals[name.strip()] = int(value.strip().replace(",", ""))
            except ValueError:
                pass
    return totals


def _dump(_signum: int, _frame: Any) -> None:
    n = _dump.count = getattr(_dump, "count", 0) + 1  # type: ignore[attr-defined]
    path = f"{_PREFIX}-{n}"
    mallinfo = _mallinfo()  # first: what follows allocates and frees
    pymalloc = _pymalloc()
    traced = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else (0, 0)
    try:
        uas = _ua_attributes()
    except Exception as exc:  # the dump goes on without it
        uas = {"error": {"_count": [1, 0], repr(exc)[:200]: [0, 1]}}
    by_type: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        t = type(obj)
        name = f"{t.__module__}.{t.__qualname__}"
        if t is _FUNCTION:  # closures and callbacks: by the code that made them
            name = f"function {obj.__module__}.{obj.__qualname__}"
        elif t is _METHOD:
            name = f"method {obj.__func__.__module__}.{obj.__func__.__qualname__}"
        row = by_type.setdefault(name, [0, 0])
        row[0] += 1
        row[1] += sys.getsizeof(obj)  # shallow; an instance's dict, if it has one, is counted as a dict
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(path + ".tm")
    with open(path + ".json", "w") as f:
        json.dump({"uas": uas, "types": by_type, "traced": traced[0], "mallinfo": mallinfo, "pymalloc": pymalloc}, f)
    open(path + ".done", "w").close()


def _deep_size(obj: Any, seen: set[int], stop: tuple[type, ...]) -> int:
    """Bytes reachable from obj (sys.getsizeof, each object once), not entering `stop` types."""
    size, todo = 0, [obj]
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, stop) or callable(o):
            continue   # a callback (function, method, callable object) leads to the call and the router
        seen.add(id(o))
        size += sys.getsizeof(o)
        todo.extend(gc.get_referents(o))
    return size


def _ua_attributes() -> dict[str, dict[str, list[float]]]:
    """Per sippy UA state: how many UAs, and per attribute the mean bytes it alone holds (deep size;
    shared things such as the config, other UAs, classes, functions, bound methods and other callable
    objects are not entered)."""
    try:
        from sippy.UA import UA
    except ImportError:
        return {}
    stop: tuple[type, ...] = (type, types.ModuleType, types.FunctionType, types.MethodType, UA)
    out: dict[str, dict[str, list[float]]] = {}
    all_uas = [o for o in gc.get_objects() if isinstance(o, UA)]
    shared = {id(ua.global_config) for ua in all_uas}  # one config for all: not per UA
    holders: dict[str, int] = {}
    for ua in all_uas:
        if getattr(ua.state, "dead", False) and sum(holders.values()) < 200:
            for ref in gc.get_referrers(ua):  # what keeps a dead UA alive: a dict's owner or the object itself
                owners = [o for o in gc.get_referrers(ref) if getattr(o, "__dict__", None) is ref] \
                    if isinstance(ref, dict) else [ref]
                for owner in owners[:1] or [ref]:
                    key = f"{type(owner).__module__}.{type(owner).__qualname__}"
                    holders[key] = holders.get(key, 0) + 1
    if holders:
        out["(holders of dead UAs)"] = {"_count": [1, 0], **{k: [v, 1] for k, v in holders.items()}}
    for ua in all_uas:
        state = type(ua.state).__name__ if ua.state is not None else "None"
        row = out.setdefault(state, {"_count": [0, 0]})
        row["_count"][0] += 1
        seen = set(shared)
        seen.add(id(ua.__dict__))
        for name, value in ua.__dict__.items():
            cell = row.setdefault(name, [0, 0])
            cell[0] += _deep_size(value, seen, stop)
            cell[1] += 1
        row["_count"][1] += sys.getsizeof(ua) + sys.getsizeof(ua.__dict__)
    return out


def _collect_and_trim(_signum: int, _frame: Any) -> None:
    found = gc.collect()  # what reference counting left: cyclic garbage (the edge collects when idle)
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    with open(f"{_PREFIX}-collected.json", "w") as f:
        json.dump({"unreachable": found}, f)


if _PREFIX:
    signal.signal(signal.SIGUSR2, _dump)
    signal.signal(signal.SIGUSR1, _collect_and_trim)
