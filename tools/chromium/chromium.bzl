"""Debian's chromium-headless-shell, for tests that drive the web page.

A repository rule, like //tools/clang's: on first use (the first build of a
target that depends on @chromium//:headless_shell) it runs
tools/provision_chromium.py, which unpacks the browser and the libraries
this host lacks into the user cache, and links its launcher here. So
`tools/bazel test //...` provisions it on a clean clone, and a build that
needs no browser never fetches one.
"""

load("//tools:provision.bzl", "run_provisioner")

_BUILD = """\
package(default_visibility = ["//visibility:public"])

# The browser's launcher: give its path to Playwright as executable_path
# (with --no-sandbox).
filegroup(
    name = "headless_shell",
    srcs = ["chromium-headless-shell"],
)
"""

def _chromium_impl(rctx):
    prefix = run_provisioner(
        rctx,
        ["provision_chromium.py", "provision_bazel.py", "provision_cache.py", "debian.py"],
        "chromium-headless-shell",
    )
    rctx.symlink(prefix, "chromium-headless-shell")
    rctx.file("BUILD.bazel", _BUILD)

chromium = repository_rule(
    implementation = _chromium_impl,
    environ = ["TORCHCHAT_CACHE", "XDG_CACHE_HOME"],
    configure = True,
)
