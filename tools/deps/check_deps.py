"""Checks that a binary's dependencies stay out of forbidden territory.

Two views of the same rule ("aoti_run never depends on ExecuTorch, et_run
never on libtorch"):
  * the build graph: a manifest written by //tools/deps:deps.bzl, one label
    per line, checked for labels in forbidden external repositories;
  * the linked binary: `ldd` output, checked for forbidden shared objects.

Usage: check_deps.py --manifest FILE --forbid-repo executorch
       check_deps.py --binary FILE --forbid-lib libexecutorch
Exits 1 and lists each violation when there is one.
"""

import argparse
import re
import subprocess
import sys

_REPO_RE = re.compile(r"^@@?([^/]*)//")


def repo_of(label):
    """The apparent repository name of a label string ('' for the main repo).

    With bzlmod, canonical names look like `_main~_repo_rules~executorch` or
    `re2~`; the apparent name is the last non-empty `~` component.
    """
    m = _REPO_RE.match(label)
    if not m:
        return ""
    parts = [p for p in m.group(1).split("~") if p]
    if not parts or parts == ["_main"]:
        return ""
    return parts[-1]


def graph_violations(labels, forbidden_repos):
    return [x for x in labels if repo_of(x) in forbidden_repos]


def linked_objects(binary):
    """The shared objects the dynamic loader would load for `binary`."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ldd {binary} failed: {out.stderr.strip()}")
    objects = []
    for line in out.stdout.splitlines():
        name = line.strip().split(" ", 1)[0]
        if name and "=>" in line and "not found" in line:
            raise RuntimeError(f"{binary}: {name} not found by the loader")
        if name:
            objects.append(name)
    return objects


def link_violations(objects, forbidden_prefixes):
    return [
        o for o in objects if any(o.rsplit("/", 1)[-1].startswith(p) for p in forbidden_prefixes)
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest")
    ap.add_argument("--forbid-repo", action="append", default=[])
    ap.add_argument("--binary")
    ap.add_argument("--forbid-lib", action="append", default=[])
    args = ap.parse_args()
    bad = []
    if args.manifest:
        with open(args.manifest) as f:
            bad += graph_violations(f.read().split(), set(args.forbid_repo))
    if args.binary:
        bad += link_violations(linked_objects(args.binary), args.forbid_lib)
    for b in bad:
        print(f"forbidden dependency: {b}", file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
