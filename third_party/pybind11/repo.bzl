"""Fetches the pybind11 wheel with pip and finds the CPython headers."""

_BUILD = """\
load("@rules_cc//cc:defs.bzl", "cc_library")

package(default_visibility = ["//visibility:public"])

cc_library(
    name = "python_headers",
    hdrs = glob(["python_include/**/*.h"]),
    includes = ["python_include"],
)

cc_library(
    name = "pybind11",
    hdrs = glob(["wheel/pybind11/include/pybind11/**/*.h"]),
    includes = ["wheel/pybind11/include"],
    deps = [":python_headers"],
)
"""

def _run(rctx, args, what):
    r = rctx.execute(args, timeout = 600)
    if r.return_code != 0:
        fail("\n\ntorchchat: %s failed:\n%s%s\n" % (what, r.stdout[-3000:], r.stderr[-3000:]))
    return r.stdout

def _impl(rctx):
    python = rctx.which(rctx.attr.python)
    if not python:
        fail("\n\ntorchchat: %s is not on PATH; pybind11 extensions need CPython 3.11's headers\n" % rctx.attr.python)
    rctx.report_progress("downloading the pybind11 %s wheel" % rctx.attr.version)

    # pip, not rctx.download: the registry is whatever this machine's pip is
    # configured with, and the repository names no host.
    _run(rctx, [
        python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--dest", "dl", "pybind11==" + rctx.attr.version,
    ], "pip download pybind11")
    wheel = "dl/pybind11-%s-py3-none-any.whl" % rctx.attr.version
    digest = _run(rctx, ["sha256sum", wheel], "sha256sum").split(" ")[0]
    if digest != rctx.attr.sha256:
        fail("\n\ntorchchat: %s has sha256 %s, not the pinned %s\n" % (wheel, digest, rctx.attr.sha256))
    rctx.symlink(wheel, "pybind11.zip")  # extract() picks the format by suffix
    rctx.extract("pybind11.zip", output = "wheel")
    rctx.delete("pybind11.zip")
    rctx.delete("dl")

    include = _run(rctx, [python, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"], "sysconfig").strip()
    if not rctx.path(include + "/Python.h").exists:
        fail("\n\ntorchchat: %s lacks Python.h; install CPython 3.11's development headers\n" % include)
    rctx.symlink(include, "python_include")
    rctx.file("BUILD.bazel", _BUILD)

pybind11_repo = repository_rule(
    implementation = _impl,
    attrs = {
        "version": attr.string(mandatory = True),
        "sha256": attr.string(mandatory = True),
        "python": attr.string(default = "python3.11"),
    },
    environ = ["PATH", "PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"],
)
