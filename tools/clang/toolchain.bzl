"""The clang 16 C++ toolchain that --config=clang selects.

A repository rule: on first use it runs tools/provision_clang.py, which puts
Debian bookworm's clang 16 (with libFuzzer and the sanitizer runtimes) into
the user cache, then configures a toolchain for it with Bazel's own Unix
auto-configuration, as @local_config_cc does for the host gcc. So flags,
include directories and linker are detected the same way; since the compiler
is clang, the configuration also gets a module map of the system headers and
the `layering_check` feature (clang's -fmodules-strict-decluse), which gcc
lacks. Headers and libraries are the host's glibc and libstdc++.

The prefix lives in the same user cache as tools/bazel's (TORCHCHAT_CACHE,
else $XDG_CACHE_HOME/torchchat, else ~/.cache/torchchat).
"""

load("//tools:provision.bzl", "run_provisioner")
load("@bazel_tools//tools/cpp:unix_cc_configure.bzl", "configure_unix_toolchain")

_TOOLCHAIN = """
toolchain(
    name = "cc-toolchain",
    exec_compatible_with = ["@platforms//cpu:x86_64", "@platforms//os:linux"],
    target_compatible_with = ["@platforms//cpu:x86_64", "@platforms//os:linux"],
    toolchain = ":cc-compiler-k8",
    toolchain_type = "@bazel_tools//tools/cpp:toolchain_type",
)

# What the fuzz test runs: ASan's symbolizer.
filegroup(
    name = "llvm_symbolizer",
    srcs = ["bin/llvm-symbolizer"],
)
"""

def _clang_toolchain_impl(rctx):
    prefix = run_provisioner(
        rctx,
        ["provision_clang.py", "provision_bazel.py", "provision_cache.py", "debian.py"],
        "clang 16",
    )
    llvm = prefix + "/usr/lib/llvm-16/bin/"
    rctx.symlink(llvm + "llvm-symbolizer", "bin/llvm-symbolizer")
    configure_unix_toolchain(rctx, "k8", {
        "gcc": llvm + "clang",
        "ar": llvm + "llvm-ar",
        "llvm-cov": llvm + "llvm-cov",
        "llvm-profdata": llvm + "llvm-profdata",
    })
    rctx.file("BUILD", rctx.read("BUILD") + _TOOLCHAIN)

clang_toolchain = repository_rule(
    implementation = _clang_toolchain_impl,
    environ = ["TORCHCHAT_CACHE", "XDG_CACHE_HOME"],
    configure = True,
)
