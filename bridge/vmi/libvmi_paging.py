"""LibVMI's own x86-64 page-table walker over a :class:`~bridge.vmi.physmem.LibvmiBackend`:
an independent implementation to check :mod:`bridge.vmi.paging` against.

``vmi_pagetable_lookup`` walks with the page mode that ``vmi_init_paging`` found
in the vCPU registers; LibVMI's file driver has no vCPU (LibVMI documents
``vmi_init_paging`` as live-VM only), so after a partial init the page mode stays
unknown and that call fails.  The very same walker takes the page mode as an
argument in ``vmi_nested_pagetable_lookup`` / ``vmi_get_nested_va_pages`` (no
nested table: ``VMI_PM_NONE``), which the Python bindings do not expose: they are
called here through ctypes on the very library the bindings loaded, with their
instance (the bindings' own ``get_va_pages`` cannot be used either: their
``page_info_t`` predates LibVMI 0.15's).  :meth:`LibvmiPageWalker.find_kernel_page_table`
runs LibVMI's Linux init for memory files, which finds a kernel page table by
itself and sets the page mode: then the plain ``vmi_pagetable_lookup`` works too.

LibVMI reads page tables at flat file offsets: a RAM file above the PCI hole is
refused (the harvester itself walks with :mod:`bridge.vmi.paging` over the
layout-aware reads).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile
from collections.abc import Iterator

from bridge.errors import GuestAccessError
from bridge.vmi.paging import PageFault
from bridge.vmi.physmem import LibvmiBackend

VMI_PM_NONE = 0
VMI_PM_IA32E = 4  # 4-level x86-64 paging
_VMI_SUCCESS = 0


class _PageInfo(ctypes.Structure):
    """The leading fields of LibVMI's ``page_info_t`` (libvmi.h); the rest (per-level
    entries) is room only."""

    _fields_ = [
        ("vaddr", ctypes.c_uint64), ("paddr", ctypes.c_uint64), ("naddr", ctypes.c_uint64),
        ("size", ctypes.c_uint64), ("nsize", ctypes.c_uint64), ("pt", ctypes.c_uint64),
        ("pm", ctypes.c_uint32), ("npt", ctypes.c_uint64), ("npm", ctypes.c_uint32),
        ("_levels", ctypes.c_uint8 * 512),
    ]


class _GSList(ctypes.Structure):
    pass


_GSList._fields_ = [("data", ctypes.c_void_p), ("next", ctypes.POINTER(_GSList))]

_LOG_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_quiet_handler = None


def _libraries() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    try:
        import _libvmi  # type: ignore[import-not-found]

        # the bindings' extension: dlsym searches the libvmi.so (and glib) it links, whichever that is
        vmi = ctypes.CDLL(_libvmi.__file__)
        glib = ctypes.CDLL(ctypes.util.find_library("glib-2.0") or "libglib-2.0.so.0")
    except (ImportError, OSError) as exc:
        raise GuestAccessError(f"LibVMI's library: {exc}") from None
    vmi.vmi_nested_pagetable_lookup.argtypes = [
        ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint64,
        ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64)]
    vmi.vmi_nested_pagetable_lookup.restype = ctypes.c_int
    vmi.vmi_get_nested_va_pages.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint64,
                                            ctypes.c_uint32]
    vmi.vmi_get_nested_va_pages.restype = ctypes.POINTER(_GSList)
    glib.g_free.argtypes = [ctypes.c_void_p]
    glib.g_slist_free.argtypes = [ctypes.POINTER(_GSList)]
    _quiet_v2p_cache_warnings(glib)
    return vmi, glib


def _quiet_v2p_cache_warnings(glib: ctypes.CDLL) -> None:
    """After a partial init LibVMI's translation cache does not exist: each lookup
    logs a GLib critical about a NULL hash table (and walks uncached, which is what
    an oracle wants).  Those two messages are dropped; every other one is printed."""
    global _quiet_handler
    if _quiet_handler is not None:
        return
    default = glib.g_log_default_handler
    default.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]

    def handler(domain, level, message, data):  # type: ignore[no-untyped-def]
        if message and b"hash_table != NULL" in message:
            return
        default(domain, level, message, data)

    _quiet_handler = _LOG_HANDLER(handler)
    glib.g_log_set_handler.argtypes = [ctypes.c_char_p, ctypes.c_int, _LOG_HANDLER, ctypes.c_void_p]
    glib.g_log_set_handler(b"GLib", 1 << 3, _quiet_handler, None)  # G_LOG_LEVEL_CRITICAL


class LibvmiPageWalker:
    """LibVMI's walk of a page-table root (a process's ``mm->pgd`` or the kernel's
    ``swapper_pg_dir``), 4-level IA-32e paging."""

    def __init__(self, backend: LibvmiBackend, *, levels: int = 4) -> None:
        if levels != 4:
            raise GuestAccessError(f"the LibVMI oracle walks 4-level paging only (the guest uses {levels})")
        if backend.file_mode and backend.layout.below_4g < backend.layout.size:
            raise GuestAccessError("LibVMI's file driver reads the RAM file flat: its page walks are wrong above "
                                   "the PCI hole (a guest this large is walked by bridge.vmi.paging)")
        self.backend = backend
        self._vmi, self._glib = _libraries()

    def translate(self, root: int, virtual: int) -> int:
        """``vmi_nested_pagetable_lookup(vmi, 0, VMI_PM_NONE, root, VMI_PM_IA32E, virtual)``."""
        physical, nested = ctypes.c_uint64(), ctypes.c_uint64()
        self.backend._flush()
        status = self._vmi.vmi_nested_pagetable_lookup(self.backend.handle, 0, VMI_PM_NONE, root & ~0xFFF,
                                                       VMI_PM_IA32E, virtual, ctypes.byref(physical),
                                                       ctypes.byref(nested))
        if status != _VMI_SUCCESS:
            raise PageFault(f"LibVMI: {virtual:#x} is not mapped under {root:#x}")
        return physical.value

    def pages(self, root: int) -> Iterator[tuple[int, int, int]]:
        """(virtual, physical, size) of every present page, as LibVMI lists them
        (``vmi_get_nested_va_pages``), in LibVMI's order."""
        self.backend._flush()
        head = self._vmi.vmi_get_nested_va_pages(self.backend.handle, 0, VMI_PM_NONE, root & ~0xFFF, VMI_PM_IA32E)
        pages = []
        node = head
        while node:
            info = ctypes.cast(node.contents.data, ctypes.POINTER(_PageInfo)).contents
            pages.append((info.vaddr, info.paddr, info.size))
            self._glib.g_free(node.contents.data)
            node = node.contents.next
        if head:
            self._glib.g_slist_free(head)
        return iter(pages)

    def find_kernel_page_table(self, *, init_task: tuple[int, int], offsets: dict[str, int]) -> int:
        """LibVMI's own search for the kernel's page tables: its Linux init for memory
        files (``vmi_init_os``), told where ``init_task`` is (virtual, physical: what
        our KASLR scan found) and the ``task_struct``/``mm_struct`` offsets (the guest's
        BTF), but not where any page table is (``init_top_pgt`` 0).  LibVMI then tries
        the page directories it finds in RAM until one maps ``init_task``, and sets its
        page mode: from then on its plain ``vmi_pagetable_lookup`` works too
        (:meth:`lookup`).  Returns LibVMI's kernel page-table root (``kpgd``)."""
        from libvmi import VMIConfig  # type: ignore[import-not-found]
        from libvmi.libvmi import VMIOS  # type: ignore[import-not-found]

        virtual, physical = init_task
        # System.map lines: startup_64/phys_startup_64 only give LibVMI the kernel image's virtual-physical delta
        lines = [f"{virtual:016x} D init_task", f"{0:016x} D init_top_pgt", f"{virtual:016x} T startup_64",
                 f"{physical:016x} A phys_startup_64"]
        with tempfile.NamedTemporaryFile("w", prefix="lv-system-map-", suffix=".map", delete=False) as handle:
            handle.write("\n".join(lines) + "\n")
        try:
            config = {"ostype": "Linux", "sysmap": handle.name, **offsets}
            self.backend._flush()
            os_type, error = self.backend._vmi.init_os(VMIConfig.DICT, config)
        finally:
            os.unlink(handle.name)
        if os_type != VMIOS.LINUX:
            raise GuestAccessError(f"LibVMI's Linux init failed ({os_type}, error {error})")
        return int(self.backend._vmi.get_offset("kpgd"))

    def lookup(self, root: int, virtual: int) -> int:
        """The bindings' ``vmi_pagetable_lookup`` (after :meth:`find_kernel_page_table`
        set LibVMI's page mode)."""
        from libvmi import LibvmiError  # type: ignore[import-not-found]

        self.backend._flush()
        try:
            return int(self.backend._vmi.pagetable_lookup(root & ~0xFFF, virtual))
        except LibvmiError:
            raise PageFault(f"LibVMI: {virtual:#x} is not mapped under {root:#x}") from None
