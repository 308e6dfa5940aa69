"""LibVMI's Python bindings linked to the LibVMI under a prefix (default /opt/libvmi).

PyPI's ``libvmi`` 3.7.x comes only as a manylinux wheel whose ``_libvmi`` extension
carries its own copy of LibVMI (``libvmi.libs/``); its source releases stop at 3.4,
which no longer builds against LibVMI 0.15.  So the wheel is installed for its Python
code and its C declarations (``libvmi/*_cdef.h``, the very ones its own build used),
and ``_libvmi`` is rebuilt here with cffi against the prefix's ``libvmi.h`` and
``libvmi.so`` (the wheel's bundled copy is removed): the LibVMI the tests exercise is
the one installed under the prefix.

    python scripts/libvmi_bindings.py check [PREFIX]   # exit 0: the bindings load PREFIX's libvmi.so
    python scripts/libvmi_bindings.py build [PREFIX]
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

# the order of the wheel's own libvmi_build.py (glib's first); events only where LibVMI has them
CDEF_HEADERS = ["glib_cdef.h", "libvmi_cdef.h", "slat_cdef.h", "libvmi_extra_cdef.h"]
SOURCE = """
#include <libvmi/libvmi.h>
#include <libvmi/slat.h>
#define LIBVMI_EXTRA_GLIB
#include <libvmi/libvmi_extra.h>
#include <glib.h>
"""


def loaded_library() -> str | None:
    """The libvmi.so the importable bindings load (from this process's maps)."""
    import libvmi  # type: ignore[import-not-found]  # noqa: F401 - the package and its extension

    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) > 5 else ""
        if Path(path).name.startswith("libvmi") and ".so" in path:
            return path
    return None


def check(prefix: Path) -> int:
    try:
        path = loaded_library()
    except ImportError as exc:
        print(f"libvmi bindings: not importable ({exc})", file=sys.stderr)
        return 1
    if path is None or not path.startswith(str(prefix / "lib") + "/"):
        print(f"libvmi bindings: they load {path}, not {prefix}/lib/libvmi.so", file=sys.stderr)
        return 1
    print(path)
    return 0


def _pkg_config(*args: str) -> list[str]:
    return subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout.split()


def build(prefix: Path) -> int:
    from cffi import FFI

    spec = importlib.util.find_spec("libvmi")
    if spec is None or spec.origin is None:
        raise SystemExit("libvmi bindings: install the wheel first (pip install libvmi)")
    package = Path(spec.origin).parent
    site = package.parent
    headers = list(CDEF_HEADERS)
    if (prefix / "include" / "libvmi" / "events.h").exists():
        headers.append("events_cdef.h")
    source = SOURCE + ("#include <libvmi/events.h>\n" if "events_cdef.h" in headers else "")
    ffi = FFI()
    ffi.cdef("\n".join((package / name).read_text() for name in headers))
    glib_include = [flag[2:] for flag in _pkg_config("--cflags-only-I", "glib-2.0")]
    ffi.set_source("_libvmi", source, include_dirs=[str(prefix / "include"), *glib_include],
                   library_dirs=[str(prefix / "lib")], runtime_library_dirs=[str(prefix / "lib")],
                   libraries=["vmi", "glib-2.0"])
    with tempfile.TemporaryDirectory(prefix="libvmi-bindings-") as scratch:
        built = Path(ffi.compile(tmpdir=scratch))
        for old in site.glob("_libvmi*.so"):
            old.unlink()
        shutil.rmtree(site / "libvmi.libs", ignore_errors=True)
        target = site / ("_libvmi" + sysconfig.get_config_var("EXT_SUFFIX"))
        shutil.copy2(built, target)
    for record in site.glob("libvmi-*.dist-info/RECORD"):  # pip uninstall removes it with the rest
        lines = record.read_text().splitlines()
        if f"{target.name},," not in lines:
            record.write_text("\n".join([*lines, f"{target.name},,"]) + "\n")
    # a fresh interpreter: this one may have imported the old extension
    return subprocess.run([sys.executable, __file__, "check", str(prefix)]).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("check", "build"):
        print(__doc__, file=sys.stderr)
        return 2
    prefix = Path(argv[1] if len(argv) > 1 else "/opt/libvmi")
    return check(prefix) if argv[0] == "check" else build(prefix)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
