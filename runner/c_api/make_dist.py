"""Packs one C API library as a relocatable tarball.

    <name>/include/torchchat.h
    <name>/lib/lib<x>.so.1, lib<x>.so -> lib<x>.so.1
    <name>/lib/<every runtime library it needs that we were given>
    <name>/lib/pkgconfig/<name>.pc
    <name>/lib/cmake/<cmake name>/<cmake name>-config{,-version}.cmake
    <name>/share/torchchat/examples/ (a C program and its CMakeLists.txt)

Our library's RUNPATH includes $ORIGIN, so the runtime libraries beside it
are found wherever the tarball is unpacked. Which of the candidate libraries
go in is read from the ELF files' DT_NEEDED entries, transitively.
"""

import argparse
import io
import os
import re
import subprocess
import sys
import tarfile

API_HEADER_VERSION = re.compile(r"#define TORCHCHAT_API_VERSION_(MAJOR|MINOR) (\d+)")


def needed(path: str) -> list[str]:
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def soname(path: str) -> str:
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout
    m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    return m.group(1) if m else os.path.basename(path)


def closure(lib: str, candidates: list[str]) -> dict[str, str]:
    """The candidate files `lib` needs, directly or through each other."""
    by_name = {}
    for c in candidates:
        by_name.setdefault(os.path.basename(c), c)
        by_name.setdefault(soname(c), c)
    found, todo = {}, [lib]
    while todo:
        for name in needed(todo.pop()):
            if name in by_name and name not in found:
                found[name] = by_name[name]
                todo.append(by_name[name])
    return found


def pc_file(name: str, link_name: str, description: str, version: str) -> str:
    return f"""prefix=${{pcfiledir}}/../..
includedir=${{prefix}}/include
libdir=${{prefix}}/lib

Name: {name}
Description: {description}
Version: {version}
Libs: -L${{libdir}} -l{link_name} -Wl,-rpath,${{libdir}}
Cflags: -I${{includedir}}
"""


def cmake_config(cmake_name: str, link_name: str, soname_: str) -> str:
    return f"""# find_package({cmake_name}) gives the imported target torchchat::{link_name}.
get_filename_component(_tc_prefix "${{CMAKE_CURRENT_LIST_DIR}}/../../.." ABSOLUTE)
if(NOT TARGET torchchat::{link_name})
  add_library(torchchat::{link_name} SHARED IMPORTED)
  set_target_properties(torchchat::{link_name} PROPERTIES
    IMPORTED_LOCATION "${{_tc_prefix}}/lib/{soname_}"
    IMPORTED_SONAME "{soname_}"
    INTERFACE_INCLUDE_DIRECTORIES "${{_tc_prefix}}/include")
endif()
set({cmake_name}_FOUND TRUE)
unset(_tc_prefix)
"""


def cmake_version(version: str) -> str:
    return f"""set(PACKAGE_VERSION "{version}")
if(PACKAGE_FIND_VERSION_MAJOR AND NOT PACKAGE_FIND_VERSION_MAJOR STREQUAL "{version.split(".")[0]}")
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
elseif(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
"""


def add_bytes(tar: tarfile.TarFile, path: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(path)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def add_file(tar: tarfile.TarFile, path: str, src: str, mode: int = 0o755) -> None:
    with open(src, "rb") as f:
        add_bytes(tar, path, f.read(), mode)


def add_symlink(tar: tarfile.TarFile, path: str, target: str) -> None:
    info = tarfile.TarInfo(path)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mtime = 0
    tar.addfile(info)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", required=True, help="package and pkg-config name")
    p.add_argument("--cmake-name", required=True)
    p.add_argument("--description", required=True)
    p.add_argument("--header", required=True)
    p.add_argument(
        "--lib", nargs="+", required=True, help="the library's build outputs; the .so is picked"
    )
    p.add_argument("--runtime-libs", nargs="*", default=[])
    p.add_argument("--examples", nargs="*", default=[], help="files for share/torchchat/examples/")
    p.add_argument("--compresslevel", type=int, default=6)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    libs = [x for x in a.lib if re.search(r"\.so(\.\d+)*$", x)]
    if len(libs) != 1:
        sys.exit(f"make_dist: expected one .so among {a.lib}")
    lib = libs[0]
    link_name = os.path.basename(lib)[len("lib") :].split(".so")[0]
    with open(a.header) as f:
        parts = dict(API_HEADER_VERSION.findall(f.read()))
    version = f"{parts['MAJOR']}.{parts['MINOR']}"
    so1 = soname(lib)
    runtime = closure(lib, a.runtime_libs)

    root = a.name
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w:gz", compresslevel=a.compresslevel) as tar:
        add_file(tar, f"{root}/include/torchchat.h", a.header, 0o644)
        add_file(tar, f"{root}/lib/{so1}", lib)
        add_symlink(tar, f"{root}/lib/lib{link_name}.so", so1)
        for name in sorted(runtime):
            add_file(tar, f"{root}/lib/{name}", runtime[name])
        add_bytes(
            tar,
            f"{root}/lib/pkgconfig/{a.name}.pc",
            pc_file(a.name, link_name, a.description, version).encode(),
        )
        for ex in a.examples:
            add_file(tar, f"{root}/share/torchchat/examples/{os.path.basename(ex)}", ex, 0o644)
        cm = f"{root}/lib/cmake/{a.cmake_name}"
        add_bytes(
            tar,
            f"{cm}/{a.cmake_name}-config.cmake",
            cmake_config(a.cmake_name, link_name, so1).encode(),
        )
        add_bytes(tar, f"{cm}/{a.cmake_name}-config-version.cmake", cmake_version(version).encode())
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
