"""tools/venv_install.py: uv is given the indexes, find-links, constraints and certificate that pip's own
configuration names (files and PIP_* variables, with pip's precedence), and pip does the install without uv."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "venv_install.py"
spec = importlib.util.spec_from_file_location("venv_install", TOOL)
venv_install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(venv_install)


def _isolated_pip_env(monkeypatch, tmp_path, config: str) -> None:
    """pip reads only this config file and the PIP_* variables the test sets."""
    for name in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(name)
    (tmp_path / "pip.conf").write_text(config)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "pip.conf"))


def test_pip_configuration_becomes_uv_options(monkeypatch, tmp_path):
    _isolated_pip_env(monkeypatch, tmp_path, "[global]\nindex-url = file:///idx\nfind-links = /from-file\n"
                                             "extra-index-url = file:///a file:///b\n"
                                             "[install]\nconstraint = /c.txt\n")
    monkeypatch.setenv("PIP_FIND_LINKS", "/from-env")  # the environment wins over the file, as in pip
    monkeypatch.setenv("PIP_CERT", "/ca.pem")
    config = venv_install.pip_config(sys.executable)
    cmd, env = venv_install.uv_command("uv", tmp_path / "venv", ["-q", "torch==2.14.1"], config)
    pairs = list(zip(cmd, cmd[1:]))
    assert ("--default-index", "file:///idx") in pairs and ("--constraint", "/c.txt") in pairs
    assert ("--extra-index-url", "file:///a") in pairs and ("--extra-index-url", "file:///b") in pairs
    assert ("--find-links", "/from-env") in pairs and "/from-file" not in cmd
    assert ("--index-strategy", "unsafe-best-match") in pairs and env["SSL_CERT_FILE"] == "/ca.pem"
    assert cmd[:3] == ["uv", "pip", "install"] and cmd[-2:] == ["-q", "torch==2.14.1"]
    assert ("--python", str(tmp_path / "venv" / "bin" / "python")) in pairs


def _probe_wheel(folder: Path) -> Path:
    """The smallest wheel: one module, `cvzoo_install_probe.X = 1`."""
    import base64
    import hashlib
    import zipfile
    info = "cvzoo_install_probe-0.1.dist-info"
    files = {"cvzoo_install_probe.py": b"X = 1\n",
             f"{info}/METADATA": b"Metadata-Version: 2.1\nName: cvzoo-install-probe\nVersion: 0.1\n",
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    digest = lambda d: base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode()
    record = "".join(f"{p},sha256={digest(d)},{len(d)}\n" for p, d in files.items()) + f"{info}/RECORD,,\n"
    wheel = folder / "cvzoo_install_probe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
        z.writestr(f"{info}/RECORD", record)
    return wheel


def test_when_uv_fails_pip_installs(tmp_path, capfd):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    broken_uv = tmp_path / "uv"
    broken_uv.write_text("#!/bin/sh\nexit 3\n")
    broken_uv.chmod(0o755)
    rc = venv_install.main([str(venv), str(broken_uv), "--", "-q", "--no-index", str(_probe_wheel(tmp_path))])
    assert rc == 0 and "uv failed" in capfd.readouterr().err
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import cvzoo_install_probe as p; print(p.X)"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "1"
