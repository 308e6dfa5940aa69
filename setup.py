"""Build of the compiled hot paths (the rest of the package is in pyproject.toml).

C extensions written against the CPython API, as aioquic's ``_buffer`` and
``_crypto`` are: a few hundred lines each, no build dependency beyond a C
compiler and the Python headers (``scripts/setup.sh`` installs both), no
generated code to review, and each sits behind one Python module's seam.
"""

from setuptools import Extension, setup

CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]

setup(
    ext_modules=[
        Extension("bridge.capture._records", ["bridge/capture/_records.c"],
                  depends=["bridge/capture/_batch.h", "bridge/capture/_pcap_record.h", "bridge/capture/_records_core.h"],
                  extra_compile_args=CFLAGS),
        Extension("bridge.engine._lanes", ["bridge/engine/_lanes.c"],
                  depends=["bridge/engine/_lanes_core.h", "bridge/engine/_front_core.h", "bridge/capture/_batch.h"],
                  extra_compile_args=CFLAGS),
        Extension("bridge.reinject._segments", ["bridge/reinject/_segments.c"],
                  depends=["bridge/reinject/_segments_core.h", "bridge/capture/_pcap_record.h"],
                  extra_compile_args=CFLAGS),
    ],
)
