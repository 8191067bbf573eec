"""A Python virtualenv built from a hash-pinned lock, as a Bazel repository.

rules_python's pip.parse needs network access to bootstrap its own wheel
tools, which Debian's rules_python 0.22.1 cannot do offline, so we build one
venv with pip ourselves: tools/provision_venv.py, into the user cache, one
per lock (`<cache>/venv-<key>`). Bazel refetches this repository when the
lock (or this file, or the script) changes, or when that venv is gone.

The toolchain's interpreter is a two-line script that execs the venv's
python by absolute path, instead of shipping the ~2 GB of site-packages as
runfiles. The script carries the lock's hash, so every py_binary and py_test
depends on the lock's content and reruns when it changes. Because the venv
lives at the same path for every clone, so does the script, and Python
actions (the test artifacts' genrules) hit the disk cache from any clone.
"""

load("//tools:provision.bzl", "run_provisioner")

_BUILD = """\
load("@rules_python//python:defs.bzl", "py_runtime", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

exports_files(["python3"])

py_runtime(
    name = "runtime",
    interpreter = "python3",
    python_version = "PY3",
    stub_shebang = "#!{python}",
)

py_runtime_pair(name = "runtime_pair", py3_runtime = ":runtime")

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)

# The CPython headers, for pybind11 extensions.
cc_library(
    name = "python_headers",
    hdrs = glob(["include/**/*.h"]),
    includes = ["include"],
)

cc_library(
    name = "pybind11_headers",
    hdrs = glob(["pybind11_include/pybind11/**/*.h"]),
    includes = ["pybind11_include"],
    deps = [":python_headers"],
)
"""

def _fail(rctx, msg):
    fail("\n\ntorchchat: " + msg + "\n")

def _exec(rctx, args, what, quiet = True, timeout = 3600):
    r = rctx.execute(args, quiet = quiet, timeout = timeout)
    if r.return_code != 0:
        _fail(rctx, "%s failed (exit %d):\n%s%s" % (what, r.return_code, r.stdout[-4000:], r.stderr[-4000:]))
    return r.stdout

def _python_venv_impl(rctx):
    python = rctx.which(rctx.attr.python)
    if not python:
        _fail(rctx, "%s is not on PATH; torchchat's Python environment needs CPython 3.11" % rctx.attr.python)
    version = _exec(rctx, [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], "python --version").strip()
    if version != "3.11":
        _fail(rctx, "%s is Python %s; torchchat needs 3.11 (the torch wheel is cp311)" % (python, version))

    lock = rctx.path(rctx.attr.lock)
    venv = run_provisioner(
        rctx,
        ["provision_venv.py", "provision_cache.py"],
        "the locked Python environment (first time: a few minutes)",
        args = [str(lock), str(python)],
    )

    # A venv pruned from the cache (tools/provision_cache.py removes older
    # keys' prefixes) must be built again, not left named by this repository.
    rctx.watch(venv + "/.provisioned")

    py = str(venv) + "/bin/python3"
    paths = _exec(rctx, [py, "-c", """
import sysconfig, pybind11
print(sysconfig.get_paths()["include"])
print(pybind11.get_include())
print(sysconfig.get_paths()["purelib"])
"""], "python sysconfig").strip().split("\n")
    include, pybind11_include, site = paths[0], paths[1], paths[2]
    if not rctx.path(include + "/Python.h").exists:
        _fail(rctx, "%s has no Python.h; install the CPython 3.11 development headers" % include)
    rctx.symlink(include, "include")
    rctx.symlink(pybind11_include, "pybind11_include")
    rctx.symlink(site, "site-packages")
    lock_hash = _exec(rctx, ["sha256sum", str(lock)], "sha256sum").split(" ")[0]
    rctx.file("python3", "#!/bin/sh\n# lock sha256 %s\nexec %s \"$@\"\n" % (lock_hash, py), executable = True)
    rctx.file("BUILD.bazel", _BUILD.format(python = py))

python_venv = repository_rule(
    implementation = _python_venv_impl,
    attrs = {
        "lock": attr.label(mandatory = True, allow_single_file = True),
        "python": attr.string(default = "python3.11"),
    },
    environ = [
        "PATH",
        "PIP_FIND_LINKS",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "TORCHCHAT_CACHE",
        "XDG_CACHE_HOME",
    ],
)

def _venv_package_impl(rctx):
    # Resolving a label in @pyenv makes Bazel fetch the venv first, and
    # refetch this repository whenever the venv changes.
    pyenv = rctx.path(Label("@pyenv//:python3")).dirname
    root = "%s/site-packages/%s" % (pyenv, rctx.attr.package)
    for link, target in rctx.attr.links.items():
        path = rctx.path(root + "/" + target)
        if not path.exists:
            fail("\n\ntorchchat: the locked %s wheel has no %s\n" % (rctx.attr.package, path))
        rctx.symlink(path, link)
    rctx.symlink(rctx.attr.build_file, "BUILD.bazel")

venv_package = repository_rule(
    implementation = _venv_package_impl,
    doc = "Exposes C++ headers and libraries that a locked wheel ships (torch, executorch).",
    attrs = {
        "package": attr.string(mandatory = True, doc = "The top-level package in site-packages."),
        "links": attr.string_dict(mandatory = True, doc = "Repository path -> path inside the package."),
        "build_file": attr.label(mandatory = True, allow_single_file = True),
    },
)
