#!/usr/bin/env python3
"""Provisions clang 16 (with libFuzzer and the sanitizer runtimes) into a
private prefix in the user cache, from Debian's archive.

The compiler is pinned to one Debian suite, bookworm (Debian 12), so Debian 12
and 13 hosts get the same clang: trixie no longer ships clang 16, and sid's
clang moves. Like tools/provision_bazel.py it uses a private apt
configuration (own lists, cache and dpkg status) pointed at the mirror this
machine already uses, and `dpkg-deb -x` into the prefix:

  * glibc, libstdc++, libgcc and binutils are marked as provided by the host
    (copied with their real dependency fields into the private status file,
    so apt resolves against them), so clang compiles against and links with
    the host's glibc and libstdc++ headers and the host's `ld`;
  * everything else clang, libclang-rt-16-dev (libFuzzer, ASan, UBSan) and
    llvm-16 (llvm-symbolizer for ASan's stack traces, llvm-cov) need is
    downloaded and extracted;
  * every extracted ELF gets an RPATH into the prefix (the interpreter is
    left as the host's: the host glibc is as new as bookworm's or newer).

Prints the prefix on stdout. A second caller waits on a lock, then finds it
done. Used by //tools/clang (the --config=clang toolchain's repository rule),
which runs it on first use.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import debian  # noqa: E402
import provision_bazel  # noqa: E402  (PrivateApt, get_patchelf, relativize_symlinks)
import provision_cache  # noqa: E402

CLANG_MAJOR = "16"
SUITE = "bookworm"
# Upstream 16.0.6; the Debian revision may move with bookworm point releases.
VERSION_PREFIX = "1:16.0.6-"
PACKAGES = (f"clang-{CLANG_MAJOR}", f"libclang-rt-{CLANG_MAJOR}-dev", f"llvm-{CLANG_MAJOR}")

# Provided by the host (Debian 12 or 13 with gcc installed): the C library,
# libstdc++ and its headers, binutils. clang-16 depends on gcc 12's -dev
# packages; clang finds whichever gcc the host has (12 or 14) by itself.
# libcurl4 only serves llvm-debuginfod, the i386 libraries only -m32.
HOST = (
    "libc6 libc6-dev libc-dev-bin linux-libc-dev libcrypt1 libcrypt-dev "
    "libgcc-s1 gcc-12-base libstdc++6 libstdc++-12-dev libgcc-12-dev "
    "libobjc-12-dev binutils libc6-i386 lib32gcc-s1 lib32stdc++6 libcurl4 "
    "python3 perl-base dpkg debconf"
).split()

# Dependencies are left out: the host satisfies them, and apt would
# otherwise see these entries as broken.
STATUS_FIELDS = ("Package", "Version", "Architecture", "Multi-Arch", "Provides")

GLIBC_RE = provision_bazel.GLIBC_RE


def log(msg):
    print(f"[provision_clang] {msg}", file=sys.stderr, flush=True)


def die(msg):
    print(f"provision_clang: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def mark_host_provided(apt, packages):
    """Writes the private dpkg status: each host package as installed, with
    its real Version/Provides/Multi-Arch so that apt does not replace it."""
    env = dict(os.environ, APT_CONFIG=apt.conf, LC_ALL="C")
    with open(os.path.join(apt.root, "status"), "w") as out:
        for name in packages:
            p = subprocess.run(
                ["apt-cache", "show", "--no-all-versions", name],
                env=env,
                text=True,
                capture_output=True,
            )
            if p.returncode != 0 or not p.stdout.strip():
                continue
            stanza = p.stdout.strip().split("\n\n")[0]
            fields = {}
            cur = None
            for line in stanza.splitlines():
                if line.startswith((" ", "\t")) and cur:
                    fields[cur] += "\n" + line
                    continue
                m = re.match(r"^([A-Za-z-]+): ?(.*)$", line)
                if m:
                    cur = m.group(1)
                    fields[cur] = m.group(2)
            out.write(f"Package: {name}\nStatus: install ok installed\n")
            for k in STATUS_FIELDS[1:]:
                if k in fields:
                    out.write(f"{k}: {fields[k]}\n")
            out.write("Maintainer: none\nDescription: provided by host\n\n")


def fetch_debs(work):
    mirror = debian.mirror()
    if not mirror:
        die("could not find a Debian mirror in /etc/apt/sources.list{,.d/*}")
    apt = provision_bazel.PrivateApt(os.path.join(work, "apt-" + SUITE), mirror, SUITE)
    log(f"reading the Debian {SUITE} package index")
    apt.run("-q", "update", capture=True)
    version = apt.show(PACKAGES[0]).get("Version", "")
    if not version.startswith(VERSION_PREFIX):
        die(
            f"Debian {SUITE} offers {PACKAGES[0]} {version or 'none'}, not "
            f"{VERSION_PREFIX}*; update tools/provision_clang.py"
        )
    mark_host_provided(apt, HOST)
    log(f"downloading {' '.join(PACKAGES)} {version} from {SUITE}")
    apt.run("-q", "--download-only", "-y", "install", *[f"{p}={version}" for p in PACKAGES])
    return sorted(glob.glob(os.path.join(apt.root, "archives", "*.deb"))), version


def patch_rpaths(prefix, patchelf):
    """RPATH into the prefix for every dynamic ELF; the interpreter stays."""
    libdirs = [
        os.path.join(prefix, "usr/lib/x86_64-linux-gnu"),
        os.path.join(prefix, f"usr/lib/llvm-{CLANG_MAJOR}/lib"),
    ]
    count = 0
    for dirpath, _, filenames in os.walk(prefix):
        if "/clang/" in dirpath + "/" and "/lib/linux" in dirpath:
            continue  # sanitizer runtimes are linked into user binaries
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or GLIBC_RE.match(name) or not provision_bazel.is_elf(p):
                continue
            needed = subprocess.run([patchelf, "--print-needed", p], capture_output=True, text=True)
            if needed.returncode != 0 or not needed.stdout.strip():
                continue
            os.chmod(p, os.stat(p).st_mode | 0o200)
            old = subprocess.run(
                [patchelf, "--print-rpath", p], capture_output=True, text=True
            ).stdout.strip()
            rpath = ":".join(x for x in [old] + libdirs if x)
            r = subprocess.run(
                [patchelf, "--force-rpath", "--set-rpath", rpath, p], capture_output=True, text=True
            )
            if r.returncode != 0:
                die(f"patchelf --set-rpath {p}: {r.stderr}")
            count += 1
    return count


def provision(prefix):
    t0 = time.time()
    work = prefix + ".download"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    patchelf = provision_bazel.get_patchelf(work)
    debs, version = fetch_debs(work)
    size = provision_bazel.extract_debs(debs, prefix, log)
    n = patch_rpaths(prefix, patchelf)
    clang = os.path.join(prefix, f"usr/lib/llvm-{CLANG_MAJOR}/bin/clang")
    p = subprocess.run([clang, "--version"], capture_output=True, text=True)
    if p.returncode != 0:
        die(f"the extracted clang does not run: {p.stderr.strip()}")
    shutil.rmtree(work, ignore_errors=True)
    log(
        f"provisioned clang {version} in {time.time() - t0:.0f} s: {len(debs)} debs, "
        f"{size / 2**20:.0f} MiB downloaded, {n} ELF files patched"
    )
    return f"clang-{CLANG_MAJOR} {version} from {SUITE}\n"


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    k = provision_cache.key(
        "provision_clang.py", "provision_bazel.py", "provision_cache.py", "debian.py"
    )
    print(provision_cache.provisioned(f"clang-{CLANG_MAJOR}", k, provision))


if __name__ == "__main__":
    main()
