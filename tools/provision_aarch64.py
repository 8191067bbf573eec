#!/usr/bin/env python3
"""Provisions the aarch64-linux-gnu cross toolchain and user-mode QEMU into a
private prefix in the user cache, from Debian's archive, plus ExecuTorch's
aarch64 libraries from its PyPI wheel.

Debian's cross packages (g++-aarch64-linux-gnu, binutils-aarch64-linux-gnu,
libc6-dev-arm64-cross) and qemu-user-static are pinned to one suite,
bookworm, so Debian 12 and 13 hosts get the same gcc 12 and the same glibc
2.36 to link against. As tools/provision_clang.py does, it uses a private
apt configuration pointed at this machine's own mirror, marks the host's C
library as provided, downloads the rest and `dpkg-deb -x`s it into the
prefix.

It writes wrappers in <prefix>/bin:
  * aarch64-linux-gnu-<tool> for gcc, ld, ar, nm, ...: each finds the host
    libraries unpacked beside it; gcc also gets --sysroot=<prefix>, so the
    headers and the libc.so linker script's absolute paths resolve there;
  * qemu-aarch64: runs an aarch64 program with the prefix's glibc
    (-L <prefix>/usr/aarch64-linux-gnu).

ExecuTorch: the executorch 1.5.1 manylinux_2_28_aarch64 wheel, fetched with
pip (this machine's own index configuration) and checked against the hash
below; its include/ and lib/ go to <prefix>/executorch.

Prints the prefix on stdout. Used by //tools/aarch64 (the --config=aarch64
toolchain's repository rule), which runs it on first use.
"""

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import debian  # noqa: E402
import provision_bazel  # noqa: E402  (PrivateApt, relativize_symlinks)
import provision_cache  # noqa: E402
import provision_clang  # noqa: E402  (mark_host_provided)

SUITE = "bookworm"
GCC_VERSION_PREFIX = "12.2.0-14cross"
PACKAGES = (
    "g++-aarch64-linux-gnu",
    "binutils-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
)
# Provided by the host (Debian 12 or 13): its C library and what apt would
# otherwise try to replace under the running system.
HOST = (
    "libc6 libc6-dev libc-dev-bin linux-libc-dev libcrypt1 zlib1g libzstd1 "
    "dpkg debconf perl-base python3"
).split()

EXECUTORCH = "executorch==1.5.1"
EXECUTORCH_WHEEL = "executorch-1.5.1-cp311-cp311-manylinux_2_28_aarch64.whl"
EXECUTORCH_SHA256 = "8ee02348a3ea80ddf770822911ebf78da616b73afce0fbaaa79f23311c88c66a"


def log(msg: str) -> None:
    print(f"[provision_aarch64] {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    print(f"provision_aarch64: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def fetch_debs(work: str) -> tuple:
    mirror = debian.mirror()
    if not mirror:
        die("could not find a Debian mirror in /etc/apt/sources.list{,.d/*}")
    apt = provision_bazel.PrivateApt(os.path.join(work, "apt-" + SUITE), mirror, SUITE)
    log(f"reading the Debian {SUITE} package index")
    apt.run("-q", "update", capture=True)
    version = apt.show("g++-12-aarch64-linux-gnu").get("Version", "")
    if not version.startswith(GCC_VERSION_PREFIX):
        die(
            f"Debian {SUITE} offers g++-12-aarch64-linux-gnu {version or 'none'}, not "
            f"{GCC_VERSION_PREFIX}*; update tools/provision_aarch64.py"
        )
    provision_clang.mark_host_provided(apt, HOST)
    log(f"downloading {' '.join(PACKAGES)} and what they need from {SUITE}")
    apt.run("-q", "--download-only", "-y", "install", *PACKAGES)
    return sorted(glob.glob(os.path.join(apt.root, "archives", "*.deb"))), version


# Every host-side tool the toolchain calls, wrapped (see write_wrappers).
TOOLS = {
    "gcc": "usr/bin/aarch64-linux-gnu-gcc-12",
    "cpp": "usr/bin/aarch64-linux-gnu-cpp-12",
    "gcov": "usr/bin/aarch64-linux-gnu-gcov-12",
    "ld": "usr/aarch64-linux-gnu/bin/ld",
    "ar": "usr/bin/aarch64-linux-gnu-ar",
    "nm": "usr/bin/aarch64-linux-gnu-nm",
    "objcopy": "usr/bin/aarch64-linux-gnu-objcopy",
    "objdump": "usr/bin/aarch64-linux-gnu-objdump",
    "readelf": "usr/bin/aarch64-linux-gnu-readelf",
    "strip": "usr/bin/aarch64-linux-gnu-strip",
    "dwp": "usr/bin/aarch64-linux-gnu-dwp",
    "c++filt": "usr/bin/aarch64-linux-gnu-c++filt",
}


def write_wrappers(prefix: str) -> None:
    """bin/aarch64-linux-gnu-<tool> for each tool, and bin/qemu-aarch64.

    The tools find the libraries unpacked beside them (libisl, libmpc,
    libbfd, ...) through LD_LIBRARY_PATH, which gcc passes on to cc1, as
    and ld. (patchelf --set-rpath on cc1 gives a binary that segfaults.)
    gcc also gets --sysroot=<prefix>."""
    bindir = os.path.join(prefix, "bin")
    os.makedirs(bindir, exist_ok=True)
    head = (
        "#!/bin/sh\n# Written by tools/provision_aarch64.py.\n"
        'root="$(dirname "$(dirname "$(readlink -f "$0")")")"\n'
    )
    env = 'LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" '
    lines = {f"aarch64-linux-gnu-{t}": f'{env}exec "$root/{path}"' for t, path in TOOLS.items()}
    lines["aarch64-linux-gnu-gcc"] += ' --sysroot="$root"'
    lines["qemu-aarch64"] = (
        'exec "$root/usr/bin/qemu-aarch64-static" -L "$root/usr/aarch64-linux-gnu"'
    )
    # x86-64 on an older x86-64 CPU (-cpu Haswell: AVX2 and no AVX-512), for
    # //tests:avx2_kind_test.
    lines["qemu-x86_64"] = 'exec "$root/usr/bin/qemu-x86_64-static"'

    for name, line in lines.items():
        path = os.path.join(bindir, name)
        with open(path, "w") as f:
            f.write(head + line + ' "$@"\n')
        os.chmod(path, 0o755)
    # qemu-user-static carries every architecture; aarch64's and x86-64's are used.
    for other in glob.glob(os.path.join(prefix, "usr/bin/qemu-*-static")):
        if os.path.basename(other) not in ("qemu-aarch64-static", "qemu-x86_64-static"):
            os.remove(other)


def fetch_executorch(prefix: str, work: str) -> None:
    log(f"downloading {EXECUTORCH_WHEEL}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            "manylinux_2_28_aarch64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "-d",
            work,
            EXECUTORCH,
        ],
        check=True,
    )
    wheel = os.path.join(work, EXECUTORCH_WHEEL)
    with open(wheel, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != EXECUTORCH_SHA256:
        die(f"{EXECUTORCH_WHEEL} has sha256 {digest}, not the pinned {EXECUTORCH_SHA256}")
    out = os.path.join(prefix, "executorch")
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(("executorch/include/", "executorch/lib/")):
                z.extract(name, prefix)
    os.rename(os.path.join(prefix, "executorch"), out + ".tmp")
    os.rename(out + ".tmp", out)


def check(prefix: str) -> None:
    """A threaded C++ program compiles, links and runs under QEMU."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.cc")
        with open(src, "w") as f:
            f.write(
                "#include <cstdio>\n#include <thread>\n"
                "int main() { int x = 0; std::thread t([&] { x = 42; }); t.join();"
                ' std::printf("%d\\n", x); }\n'
            )
        exe = os.path.join(tmp, "t")
        gcc = os.path.join(prefix, "bin/aarch64-linux-gnu-gcc")
        r = subprocess.run(
            [gcc, "-x", "c++", src, "-o", exe, "-lstdc++", "-pthread"],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            die(f"the cross compiler does not work:\n{r.stderr[-3000:]}")
        r = subprocess.run(
            [os.path.join(prefix, "bin/qemu-aarch64"), exe],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.stdout.strip() != "42":
            die(f"QEMU does not run the program (exit {r.returncode}):\n{r.stderr[-3000:]}")


def provision(prefix: str) -> str:
    t0 = time.time()
    work = prefix + ".download"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    debs, version = fetch_debs(work)
    size = provision_bazel.extract_debs(debs, prefix, log)
    write_wrappers(prefix)
    check(prefix)
    fetch_executorch(prefix, work)
    shutil.rmtree(work, ignore_errors=True)
    log(
        f"provisioned g++ {version} and qemu-user-static in {time.time() - t0:.0f} s: "
        f"{len(debs)} debs, {size / 2**20:.0f} MiB downloaded"
    )
    return f"g++-12-aarch64-linux-gnu {version} from {SUITE}; {EXECUTORCH_WHEEL}\n"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    k = provision_cache.key(
        "provision_aarch64.py",
        "provision_clang.py",
        "provision_bazel.py",
        "provision_cache.py",
        "debian.py",
    )
    print(provision_cache.provisioned("aarch64", k, provision))


if __name__ == "__main__":
    main()
