#!/usr/bin/env python3
"""Fetches the C++ dependencies named in third_party/debian/sources.json.

Each is an upstream tarball from Debian's archive, pinned by sha256. It is
extracted into OUT/<module>, the overlay in third_party/debian/<module>/ is
copied over it, and OUT/deps.bazelrc gets an --override_module line for it.
That is how Debian's own Bazel resolves modules offline, and it keeps every
dependency a real bzlmod module that `bazel mod graph` shows.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import urllib.request

import debian


def die(msg):
    print(f"tools/bazel: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pool_path(source):
    prefix = source[:4] if source.startswith("lib") else source[0]
    return f"pool/main/{prefix}/{source}"


def download(mirror, spec, archives):
    path = os.path.join(archives, spec["file"])
    if os.path.exists(path) and sha256(path) == spec["sha256"]:
        return path
    url = f"{mirror}/{pool_path(spec['source'])}/{spec['file']}"
    print(f"[tools/bazel] downloading {spec['file']}", file=sys.stderr, flush=True)
    tmp = path + ".part"
    try:
        with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        die(
            f"could not download {spec['file']} from Debian's archive ({e}); "
            f"the pinned version may have left the {spec['suite']} pool"
        )
    got = sha256(tmp)
    if got != spec["sha256"]:
        os.unlink(tmp)
        die(f"{spec['file']}: sha256 {got} does not match the pinned {spec['sha256']}")
    os.replace(tmp, path)
    return path


def extract(archive, strip, dest):
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tarfile.open(archive) as t:
        t.extractall(tmp, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(os.path.join(tmp, strip), dest)
    shutil.rmtree(tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--archives", required=True, help="download cache")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    with open(args.manifest) as f:
        modules = json.load(f)["modules"]
    overlays = os.path.dirname(os.path.abspath(args.manifest))
    mirror = debian.mirror()
    if not mirror:
        die("no Debian mirror in /etc/apt/sources.list{,.d/*}")
    os.makedirs(args.archives, exist_ok=True)
    tmp_out = args.out + ".tmp"
    shutil.rmtree(tmp_out, ignore_errors=True)
    os.makedirs(tmp_out)
    rc = []
    for name, spec in sorted(modules.items()):
        archive = download(mirror, spec, args.archives)
        dest = os.path.join(tmp_out, name)
        extract(archive, spec["strip"], dest)
        overlay = os.path.join(overlays, name)
        if os.path.isdir(overlay):
            shutil.copytree(overlay, dest, dirs_exist_ok=True)
        if not os.path.exists(os.path.join(dest, "MODULE.bazel")):
            die(f"{name} has neither an upstream nor an overlay MODULE.bazel")
        final = os.path.join(args.out, name)
        rc.append(f"common --override_module={name}={final}")
    with open(os.path.join(tmp_out, "deps.bazelrc"), "w") as f:
        f.write("# Written by tools/fetch_debian_sources.py; do not edit.\n")
        f.write("\n".join(rc) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    os.rename(tmp_out, args.out)


if __name__ == "__main__":
    main()
