"""Native stacks read in process with elfutils' libdw (Debian's ``libdw1``, the library ``eu-stack``
is built on), through ctypes.

``eu-stack`` costs a process start and a fresh look at every mapped file per process read (about
2.7 ms a process here, against 0.5 ms in process), and ``gproc stack`` reads every process of a job.
The calls are libdw's documented Dwfl interface: report the process's modules from /proc, attach
with ptrace (every thread stopped, then let go by ``dwfl_end``), walk each thread's frames with the
modules' CFI. A frame's *place* is its module's build id and its offset there, as ``eu-stack -b``
prints it, so a place named once (a symbol table look-up, most of the cost) is named for every
process that maps the module.

libdw is not thread-safe, so one lock serialises its use in this process (a daemon process may
serve many nodes). Nothing here is loaded until ``load()`` is called; without libdw it says why and
the caller uses ``eu-stack`` or gdb."""

from __future__ import annotations

import ctypes as C
import functools
import os
import re
import threading

DWARF_CB_OK, DWARF_CB_ABORT = 0, 1
MAX_FRAMES = 512  # per thread: a corrupt stack must not walk for ever
MAX_THREADS = 4096  # per process read

Place = tuple[str, str]  # (build id, or module path without one; offset in the module, hex)
Frame = tuple[Place, str, str]  # (place, symbol or "", module path)

_Addr = C.c_uint64
_THREAD_CB = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_void_p)
_FRAME_CB = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_void_p)


class _Callbacks(C.Structure):
    """``Dwfl_Callbacks``: how libdw finds a module's ELF file and its separate debug information."""

    _fields_ = [
        ("find_elf", C.c_void_p),
        ("find_debuginfo", C.c_void_p),
        ("section_address", C.c_void_p),
        ("debuginfo_path", C.c_void_p),
    ]


class DwError(Exception):
    """A process's stack could not be read with libdw (the text says why, without numbers)."""


class Libdw:
    """The loaded library and its argument types; ``frames(pid, names)`` reads one process."""

    def __init__(self, lib: C.CDLL) -> None:
        self.lib = lib
        self.lock = threading.Lock()
        f = lib
        f.dwfl_begin.restype, f.dwfl_begin.argtypes = C.c_void_p, [C.POINTER(_Callbacks)]
        f.dwfl_linux_proc_report.argtypes = [C.c_void_p, C.c_int]
        f.dwfl_report_end.argtypes = [C.c_void_p, C.c_void_p, C.c_void_p]
        f.dwfl_linux_proc_attach.argtypes = [C.c_void_p, C.c_int, C.c_bool]
        f.dwfl_getthreads.argtypes = [C.c_void_p, _THREAD_CB, C.c_void_p]
        f.dwfl_thread_getframes.argtypes = [C.c_void_p, _FRAME_CB, C.c_void_p]
        f.dwfl_frame_pc.restype = C.c_bool
        f.dwfl_frame_pc.argtypes = [C.c_void_p, C.POINTER(_Addr), C.POINTER(C.c_bool)]
        f.dwfl_addrmodule.restype, f.dwfl_addrmodule.argtypes = C.c_void_p, [C.c_void_p, _Addr]
        f.dwfl_module_build_id.argtypes = [C.c_void_p, C.POINTER(C.POINTER(C.c_ubyte)), C.POINTER(_Addr)]
        f.dwfl_module_info.restype = C.c_char_p
        f.dwfl_module_info.argtypes = [
            C.c_void_p, C.c_void_p, C.POINTER(_Addr), C.POINTER(_Addr),
            C.c_void_p, C.c_void_p, C.POINTER(C.c_char_p), C.POINTER(C.c_char_p),
        ]  # fmt: skip
        f.dwfl_module_getelf.restype, f.dwfl_module_getelf.argtypes = C.c_void_p, [C.c_void_p, C.POINTER(_Addr)]
        f.dwfl_module_addrname.restype, f.dwfl_module_addrname.argtypes = C.c_char_p, [C.c_void_p, _Addr]
        f.dwfl_end.argtypes = [C.c_void_p]
        f.dwfl_errno.restype = C.c_int
        f.dwfl_errmsg.restype, f.dwfl_errmsg.argtypes = C.c_char_p, [C.c_int]
        self.callbacks = _Callbacks(
            C.cast(f.dwfl_linux_proc_find_elf, C.c_void_p).value,
            C.cast(f.dwfl_standard_find_debuginfo, C.c_void_p).value,
            None,
            None,
        )

    def _why(self, what: str) -> DwError:
        msg = (self.lib.dwfl_errmsg(-1) or b"unknown error").decode(errors="replace")
        return DwError(f"libdw {what}: {re.sub(r'[0-9]{2,}', 'N', msg)[:200]}")

    def frames(self, pid: int, names: dict[Place, str]) -> list[list[Frame]]:
        """Every thread's frames, innermost first. A place not in ``names`` is named here (its
        symbol, or "" when the module has none for it) and added to ``names``."""
        with self.lock:
            return self._frames(pid, names)

    def _frames(self, pid: int, names: dict[Place, str]) -> list[list[Frame]]:
        lib = self.lib
        dwfl = lib.dwfl_begin(C.byref(self.callbacks))
        if not dwfl:
            raise self._why("begin")
        try:
            if lib.dwfl_linux_proc_report(dwfl, pid) != 0:
                raise DwError("no frames read (the process ended, or cannot be traced)")
            if lib.dwfl_report_end(dwfl, None, None) != 0:
                raise self._why("report")
            if lib.dwfl_linux_proc_attach(dwfl, pid, False) != 0:
                raise self._why("attach")
            threads: list[list[Frame]] = []
            modules: dict[int, tuple[str, str, int]] = {}  # module handle -> (build id, path, start)

            def module(m: int) -> tuple[str, str, int]:
                got = modules.get(m)
                if got is None:
                    start, bias = _Addr(), _Addr()
                    path = (lib.dwfl_module_info(m, None, C.byref(start), None, None, None, None, None) or b"").decode(
                        errors="replace"
                    )
                    lib.dwfl_module_getelf(m, C.byref(bias))  # the build id is read from the file
                    bits, vaddr = C.POINTER(C.c_ubyte)(), _Addr()
                    n = lib.dwfl_module_build_id(m, C.byref(bits), C.byref(vaddr))
                    got = modules[m] = (bytes(bits[:n]).hex() if n > 0 else "", path, start.value)
                return got

            def on_frame(state: int, _arg: int) -> int:
                try:
                    frames = threads[-1]
                    pc, activation = _Addr(), C.c_bool()
                    if len(frames) >= MAX_FRAMES or not lib.dwfl_frame_pc(state, C.byref(pc), C.byref(activation)):
                        return DWARF_CB_ABORT
                    # a return address points after its call: look up the call itself, as eu-stack does
                    at = pc.value - (0 if activation.value else 1)
                    m = lib.dwfl_addrmodule(dwfl, at)
                    if not m:
                        frames.append((("", f"{at:x}"), "", ""))
                        return DWARF_CB_OK
                    build, path, start = module(m)
                    place = (build or path, f"{at - start:x}")
                    name = names.get(place)
                    if name is None:
                        name = names[place] = (lib.dwfl_module_addrname(m, at) or b"").decode(errors="replace")
                    frames.append((place, name, path))
                    return DWARF_CB_OK
                except Exception:  # an exception must not cross back into C
                    return DWARF_CB_ABORT

            frame_cb = _FRAME_CB(on_frame)

            def on_thread(thread: int, _arg: int) -> int:
                if len(threads) >= MAX_THREADS:
                    return DWARF_CB_ABORT
                threads.append([])
                lib.dwfl_thread_getframes(thread, frame_cb, None)  # a walk cut short keeps its frames
                return DWARF_CB_OK

            thread_cb = _THREAD_CB(on_thread)
            lib.dwfl_getthreads(dwfl, thread_cb, None)
            out = [t for t in threads if t]
            if not out:
                raise DwError("no frames read (the process ended, or cannot be traced)")
            return out
        finally:
            lib.dwfl_end(dwfl)  # detaches: the threads run on


@functools.cache
def load() -> Libdw | str:
    """libdw, or why it cannot be used here (loaded once per process: it is a C library, not state)."""
    if os.environ.get("GPROC_NO_LIBDW"):
        return "GPROC_NO_LIBDW is set"
    try:
        return Libdw(C.CDLL("libdw.so.1"))
    except (OSError, AttributeError) as e:
        return f"libdw not usable ({e})"


__all__ = ["DwError", "Frame", "Libdw", "Place", "load"]
