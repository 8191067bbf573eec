"""pybind_extension: a Python extension module built from C++ with pybind11.

`pybind_extension(name = "foo", ...)` builds foo.so, importable as `foo`
from its package, and a py_library `name` that carries it, so py_test and
py_binary targets depend on it like on any Python library.
"""

load("@rules_cc//cc:defs.bzl", "cc_binary")
load("@rules_python//python:defs.bzl", "py_library")

def pybind_extension(name, srcs, deps = [], copts = [], linkopts = [], visibility = None, **kwargs):
    cc_binary(
        name = name + ".so",
        srcs = srcs,
        # Only the module init symbol is exported; everything else stays
        # private to the extension, as pybind11 recommends.
        copts = copts + ["-fvisibility=hidden", "-fvisibility-inlines-hidden"],
        linkopts = linkopts + ["-Wl,--exclude-libs,ALL"],
        linkshared = True,
        linkstatic = True,
        deps = deps + [Label("//:pybind11")],
        visibility = ["//visibility:private"],
        **kwargs
    )
    py_library(
        name = name,
        data = [":" + name + ".so"],
        imports = ["."],
        visibility = visibility,
    )
