"""aarch64_files: targets built for aarch64 Linux inside an x86-64 build.

A test that runs aarch64 programs under QEMU is itself a host program; it
takes its aarch64 binaries through this rule, which builds them as
--config=aarch64 would (platform and toolchain), without the whole build
switching to aarch64.
"""

def _to_aarch64_impl(settings, attr):
    return {
        "//command_line_option:platforms": ["//tools/aarch64:linux_aarch64"],
        "//command_line_option:extra_toolchains": ["@aarch64_toolchain//:cc-toolchain"] +
                                                  settings["//command_line_option:extra_toolchains"],
        "//command_line_option:platform_suffix": "aarch64",
    }

_to_aarch64 = transition(
    implementation = _to_aarch64_impl,
    inputs = ["//command_line_option:extra_toolchains"],
    outputs = [
        "//command_line_option:platforms",
        "//command_line_option:extra_toolchains",
        "//command_line_option:platform_suffix",
    ],
)

def _aarch64_files_impl(ctx):
    # Under <name>/<short path>, so that a test can carry the x86-64 and the
    # aarch64 build of the same target side by side; shared libraries stay
    # in _solib_aarch64, where the binaries' RUNPATH looks for them.
    outs, libs = [], []
    for t in ctx.attr.srcs:
        for f in t[DefaultInfo].files.to_list():
            out = ctx.actions.declare_file(ctx.label.name + "/" + f.short_path)
            ctx.actions.symlink(output = out, target_file = f, is_executable = True)
            outs.append(out)
        libs += [
            f
            for f in t[DefaultInfo].default_runfiles.files.to_list()
            if f.short_path.startswith("_solib_")
        ]
    return [DefaultInfo(
        files = depset(outs),
        runfiles = ctx.runfiles(files = outs + libs),
    )]

aarch64_files = rule(
    implementation = _aarch64_files_impl,
    attrs = {
        "srcs": attr.label_list(cfg = _to_aarch64),
        "_allowlist_function_transition": attr.label(
            default = "@bazel_tools//tools/allowlists/function_transition_allowlist",
        ),
    },
)
