#!/usr/bin/env python3
"""Provisions Debian's chromium-headless-shell into the user cache, for the
web page's browser tests.

The same way tools/provision_clang.py gets clang: a private apt
configuration (own lists, cache and a copy of the host's dpkg status), so
apt itself computes which packages this host lacks (on Debian 12, the
browser and about 18 libraries, ~96 MiB), `apt-get download` fetches them
verified against the signed index, and `dpkg-deb -x` unpacks them into
`<cache>/chromium-<key>/`. Nothing is installed system-wide and the host's
dpkg database is only read.

The libraries that came with it are found through LD_LIBRARY_PATH, set by
the launcher this writes (`<prefix>/chromium-headless-shell`), which is what
tests pass to Playwright as `executable_path`. Prints the prefix.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import debian  # noqa: E402
import provision_bazel  # noqa: E402  (PrivateApt)
import provision_cache  # noqa: E402

PACKAGE = "chromium-headless-shell"
# Unpacked beside the host's own libraries, these could not work (a libc
# needs its own loader); apt only asks for them if the browser needs a
# newer host than this one.
HOST_ONLY = {"libc6", "libgcc-s1", "libstdc++6"}
LAUNCHER = """\
#!/bin/sh
# Written by tools/provision_chromium.py: the browser with the libraries
# that were unpacked beside it.
here="$(dirname "$(readlink -f "$0")")"
export LD_LIBRARY_PATH="{libdirs}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
exec "$here/usr/lib/chromium/chromium-headless-shell" "$@"
"""


def log(msg: str) -> None:
    print(f"[provision_chromium] {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    print(f"provision_chromium: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def codename() -> str:
    with open("/etc/os-release") as f:
        m = re.search(r"^VERSION_CODENAME=\"?(\w+)", f.read(), re.M)
    if not m:
        die("/etc/os-release names no VERSION_CODENAME; this needs Debian 12 or 13")
    return m.group(1)


def plan(apt: provision_bazel.PrivateApt) -> list[tuple[str, str]]:
    """(package, version) that `apt-get install` would add to this host."""
    out = apt.run("-s", "-q", "install", PACKAGE, capture=True)
    # "Inst NAME [OLD] (NEW SUITE [ARCH])": OLD only when it would upgrade.
    got = re.findall(r"^Inst (\S+) (?:\[[^]]*\] )?\((\S+)", out, re.M)
    if not any(name == PACKAGE for name, _ in got):
        die(f"apt would not install {PACKAGE}:\n{out}")
    clash = sorted(HOST_ONLY & {name for name, _ in got})
    if clash:
        die(f"{PACKAGE} needs a newer {', '.join(clash)} than this host has; upgrade the host")
    return got


def provision(prefix: str) -> str:
    t0 = time.time()
    mirror = debian.mirror()
    if not mirror:
        die("could not find a Debian mirror in /etc/apt/sources.list{,.d/*}")
    suite = codename()
    work = prefix + ".download"
    shutil.rmtree(work, ignore_errors=True)
    apt = provision_bazel.PrivateApt(os.path.join(work, "apt"), mirror, suite)
    # apt then plans against what this host really has.
    shutil.copyfile("/var/lib/dpkg/status", os.path.join(apt.root, "status"))
    log(f"reading the Debian {suite} package index")
    apt.run("-q", "update", capture=True)
    packages = plan(apt)
    archives = os.path.join(apt.root, "archives")
    log(f"downloading {len(packages)} packages: {' '.join(n for n, _ in packages)}")
    # apt-get download writes into the working directory and checks each
    # file against the signed index.
    subprocess.run(
        ["apt-get", "-q", "download", *[f"{n}={v}" for n, v in packages]],
        cwd=archives,
        env=dict(os.environ, APT_CONFIG=apt.conf, LC_ALL="C"),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    debs = sorted(glob.glob(os.path.join(archives, "*.deb")))
    if len(debs) != len(packages):
        die(f"apt downloaded {len(debs)} files for {len(packages)} packages")
    size = provision_bazel.extract_debs(debs, prefix, log)
    libdirs = sorted(
        {
            os.path.dirname(p)
            for p in glob.glob(os.path.join(prefix, "**", "*.so*"), recursive=True)
            if "/usr/lib/chromium" not in p
        }
    )
    launcher = os.path.join(prefix, PACKAGE)
    with open(launcher, "w") as f:
        rel = ":".join("$here/" + os.path.relpath(d, prefix) for d in libdirs)
        f.write(LAUNCHER.format(libdirs=rel))
    os.chmod(launcher, 0o755)
    check(launcher)
    version = dict(packages)[PACKAGE]
    shutil.rmtree(work, ignore_errors=True)
    log(
        f"provisioned {PACKAGE} {version} in {time.time() - t0:.0f} s: {len(debs)} debs, "
        f"{size / 2**20:.0f} MiB downloaded"
    )
    return f"{PACKAGE} {version} from {suite}\n"


def check(launcher: str) -> None:
    """It starts, parses a page and runs its script."""
    page = "data:text/html,<p id=x></p><script>x.textContent='ran '+(6*7)</script>"
    p = subprocess.run(
        [launcher, "--no-sandbox", "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "ran 42" not in p.stdout:
        die(f"the unpacked browser does not work (exit {p.returncode}):\n{p.stderr[-3000:]}")


def main() -> None:
    k = provision_cache.key(
        "provision_chromium.py", "provision_bazel.py", "provision_cache.py", "debian.py"
    )
    prefix = provision_cache.provisioned("chromium", k, provision)
    print(os.path.join(prefix, PACKAGE))


if __name__ == "__main__":
    main()
