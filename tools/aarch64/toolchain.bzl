"""The aarch64-linux-gnu C++ toolchain that --config=aarch64 selects.

A repository rule: on first use it runs tools/provision_aarch64.py, which
puts Debian bookworm's gcc 12 cross compiler, binutils, the arm64 glibc and
libstdc++, qemu-user-static and ExecuTorch's aarch64 libraries into the user
cache; then it configures a toolchain for that compiler with Bazel's own Unix
auto-configuration, as tools/clang does for clang. The compiler runs through
wrappers (the provisioner's) that pass --sysroot=<prefix>, so headers, crt
files and the libc.so linker script's absolute paths all resolve inside the
prefix, and that find the host libraries unpacked there.

The repository also exposes `qemu-aarch64` (a wrapper that runs an aarch64
program with the prefix's glibc) and `executorch/lib/*.so`, which the
@executorch overlay selects on aarch64.
"""

load("//tools:provision.bzl", "run_provisioner")
load("@bazel_tools//tools/cpp:unix_cc_configure.bzl", "configure_unix_toolchain")

_EXTRA = """
toolchain(
    name = "cc-toolchain",
    exec_compatible_with = ["@platforms//cpu:x86_64", "@platforms//os:linux"],
    target_compatible_with = ["@platforms//cpu:aarch64", "@platforms//os:linux"],
    toolchain = ":cc-compiler-aarch64",
    toolchain_type = "@bazel_tools//tools/cpp:toolchain_type",
)

# Runs an aarch64 program: qemu-aarch64 PROGRAM ARGS...
filegroup(
    name = "qemu",
    srcs = ["bin/qemu-aarch64"],
    visibility = ["//visibility:public"],
)

# Runs an x86-64 program on an emulated older CPU: qemu-x86_64 -cpu MODEL PROGRAM ARGS...
filegroup(
    name = "qemu_x86_64",
    srcs = ["bin/qemu-x86_64"],
    visibility = ["//visibility:public"],
)

# The cross compiler itself, for building against a package outside Bazel.
filegroup(
    name = "gcc",
    srcs = ["bin/aarch64-linux-gnu-gcc"],
    visibility = ["//visibility:public"],
)

exports_files(glob(["executorch/lib/*.so"]))
"""

def _aarch64_toolchain_impl(rctx):
    prefix = run_provisioner(
        rctx,
        ["provision_aarch64.py", "provision_clang.py", "provision_bazel.py",
         "provision_cache.py", "debian.py"],
        "the aarch64 toolchain",
    )
    rctx.symlink(prefix + "/bin/qemu-aarch64", "bin/qemu-aarch64")
    rctx.symlink(prefix + "/bin/qemu-x86_64", "bin/qemu-x86_64")
    rctx.symlink(prefix + "/bin/aarch64-linux-gnu-gcc", "bin/aarch64-linux-gnu-gcc")
    rctx.symlink(prefix + "/executorch/lib", "executorch/lib")
    tool = prefix + "/bin/aarch64-linux-gnu-"
    configure_unix_toolchain(rctx, "aarch64", {
        name: tool + name
        for name in ("gcc", "cpp", "gcov", "ld", "ar", "nm", "objcopy", "objdump", "strip", "dwp", "c++filt")
    })
    rctx.file("BUILD", rctx.read("BUILD") + _EXTRA)

aarch64_toolchain = repository_rule(
    implementation = _aarch64_toolchain_impl,
    environ = ["TORCHCHAT_CACHE", "XDG_CACHE_HOME"],
    configure = True,
)
