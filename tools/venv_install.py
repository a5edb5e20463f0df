"""`pip install` into a venv, run by uv when uv is at hand, under pip's own configuration.

    python3 tools/venv_install.py VENV [UV] -- PIP_INSTALL_ARGS...

uv installs the same packages several times faster than pip, whose one-file-at-a-time unpacking and
byte-compiling of torch was most of a clean clone's setup. It does not read pip's configuration, so the indexes,
find-links, constraints and certificate pip would use (`pip config list`: environment, then install, then global)
are passed on as uv's own options: both resolve from the same places to the same versions. Without uv, or if uv
fails, pip does the install. Stdlib only: it runs before any venv has packages.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

# pip option -> uv flag, each value of pip's whitespace-separated list passed once
LIST_FLAGS = {"extra-index-url": "--extra-index-url", "find-links": "--find-links", "constraint": "--constraint",
              "trusted-host": "--allow-insecure-host"}
PRECEDENCE = {":env:": 3, "install": 2, "global": 1}  # pip's: environment over command section over global


def pip_config(python: str) -> dict[str, str]:
    """pip's effective option values, as `pip config list` gives them."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    best: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        m = re.match(r"^(.+?)\.([\w-]+)='(.*)'$", line.strip())
        if m and m[1] in PRECEDENCE and PRECEDENCE[m[1]] >= best.get(m[2], (0, ""))[0]:
            best[m[2]] = (PRECEDENCE[m[1]], m[3])
    return {k: v for k, (_, v) in best.items()}


def uv_command(uv: str, venv: Path, args: list[str], config: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    cmd = [uv, "pip", "install", "--python", str(venv / "bin" / "python"),
           # pip takes the best version across all its indexes; uv's default stops at the first index with the name
           "--index-strategy", "unsafe-best-match",
           # as pip does: left to first import, every process that imports a module before one has written its .pyc
           # compiles it again (a test session's workers and the subprocesses they start)
           "--compile-bytecode"]
    if "index-url" in config:
        cmd += ["--default-index", config["index-url"]]
    for option, flag in LIST_FLAGS.items():
        for value in config.get(option, "").split():
            cmd += [flag, value]
    env = dict(os.environ)
    if "cert" in config:
        env["SSL_CERT_FILE"] = config["cert"]
    if "default-timeout" in config or "timeout" in config:
        env["UV_HTTP_TIMEOUT"] = config.get("timeout", config.get("default-timeout"))
    return cmd + args, env


def main(argv: list[str]) -> int:
    if "--" not in argv:
        sys.exit("usage: venv_install.py VENV [UV] -- PIP_INSTALL_ARGS...")
    head, args = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    venv, uv = Path(head[0]), (head[1] if len(head) > 1 else "")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", *args]
    if uv and Path(uv).is_file():
        cmd, env = uv_command(uv, venv, args, pip_config(str(venv / "bin" / "python")))
        if subprocess.run(cmd, env=env).returncode == 0:
            return 0
        print(f"venv_install: uv failed ({shlex.join(cmd)}); installing with pip instead", file=sys.stderr)
    return subprocess.run(pip).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
