"""run_provisioner: what every repository rule over tools/provision_*.py does.

It watches the scripts (editing one refetches the repository), runs the first
with the host's python3 (which reads TORCHCHAT_CACHE / XDG_CACHE_HOME) and
`args`, and returns the last line the script printed: the path it
provisioned.
"""

def run_provisioner(rctx, scripts, what, args = []):
    tools = rctx.path(Label("//tools:provision_cache.py")).dirname
    paths = [tools.get_child(n) for n in scripts]
    for p in paths:
        rctx.watch(p)
    python = rctx.which("python3")
    if not python:
        fail("python3 is needed to provision " + what)
    rctx.report_progress("provisioning %s (tools/%s)" % (what, scripts[0]))
    r = rctx.execute([python, str(paths[0])] + args, timeout = 3600, quiet = False)
    if r.return_code != 0:
        fail("tools/%s failed:\n%s" % (scripts[0], r.stderr))
    return r.stdout.strip().splitlines()[-1]
