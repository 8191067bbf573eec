"""dependency_manifest: every label a target depends on, written to a file.

It is `bazel query 'deps(TARGET)'` computed at build time by an aspect, so
that a test can assert on the dependency graph (a test cannot call Bazel).
Toolchains are not traversed: they are not what a binary links.
"""

DepsInfo = provider(fields = {"labels": "depset of Label strings"})

def _collect(ctx, attr_names):
    transitive = []
    for name in attr_names:
        value = getattr(ctx.rule.attr, name, None)
        if type(value) != "list":
            value = [value]
        for dep in value:
            if type(dep) == "Target" and DepsInfo in dep:
                transitive.append(dep[DepsInfo].labels)
    return transitive

_ATTRS = ["deps", "srcs", "hdrs", "data", "implementation_deps", "shared_library", "static_library", "interface_library", "actual", "dynamic_deps", "textual_hdrs", "additional_linker_inputs"]

def _deps_aspect_impl(target, ctx):
    return [DepsInfo(labels = depset(
        [str(target.label)],
        transitive = _collect(ctx, _ATTRS),
    ))]

deps_aspect = aspect(
    implementation = _deps_aspect_impl,
    attr_aspects = _ATTRS,
)

def _manifest_impl(ctx):
    labels = ctx.attr.target[DepsInfo].labels.to_list()
    out = ctx.actions.declare_file(ctx.label.name + ".deps")
    ctx.actions.write(out, "\n".join(sorted(labels)) + "\n")
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles([out]))]

dependency_manifest = rule(
    implementation = _manifest_impl,
    attrs = {"target": attr.label(mandatory = True, aspects = [deps_aspect])},
)
