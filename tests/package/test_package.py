"""The wheel and sdist: ``twine check``, a fresh venv, ``redlight demo``, the README's lines.

Slow (a build, two venvs with their dependencies from the index, the 20 s demo), so it runs in
``make test-package``, which provides ``build`` and ``twine`` in a venv of their own and names
it in ``$REDLIGHT_PACKAGE_TOOLS``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.unit.test_install_docs import core_lines

pytestmark = pytest.mark.package

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "redlight.service"
#: pip installs from the index, and a cold cache on a shared machine is slow.
INSTALL_S = 600
DEMO_S = 180


def run(
    args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> str:
    """Run a command; fail the test with its output if it exits non-zero."""
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def tools() -> Path:
    """The bin directory with ``build`` and ``twine`` (make test-package makes it)."""
    tools = os.environ.get("REDLIGHT_PACKAGE_TOOLS")
    if not tools:
        pytest.skip("REDLIGHT_PACKAGE_TOOLS is not set (make test-package sets it)")
    return Path(tools)


@pytest.fixture(scope="module")
def dist(tools: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist and a wheel built from it, as ``python -m build`` makes them for PyPI."""
    out = tmp_path_factory.mktemp("dist")
    run(
        [str(tools / "python"), "-m", "build", "--outdir", str(out), str(ROOT)],
        cwd=out,
        timeout=INSTALL_S,
    )
    return out


def wheel(dist: Path) -> Path:
    """The one wheel in ``dist``."""
    (found,) = dist.glob("redlight-*.whl")
    return found


def test_twine_check_passes(tools: Path, dist: Path) -> None:
    """The sdist and the wheel pass ``twine check --strict`` (what PyPI's upload checks)."""
    files = sorted(str(path) for path in dist.iterdir())
    assert len(files) == 2
    out = run([str(tools / "twine"), "check", "--strict", *files], cwd=dist)
    assert out.count("PASSED") == 2


def test_the_wheel_installs_one_top_level_package_with_its_files(dist: Path) -> None:
    """Only ``redlight`` (the benchmark inside it), with the unit, examples and the license."""
    names = zipfile.ZipFile(wheel(dist)).namelist()
    assert {name.split("/")[0] for name in names} == {"redlight", "redlight-0.1.0.dist-info"}
    assert "redlight/bench/__main__.py" in names
    assert "redlight/unit/redlight.service" in names
    assert "redlight/examples/examples/tasmota.toml" in names
    assert "redlight/examples/example.toml" in names
    assert "redlight-0.1.0.dist-info/licenses/LICENSE" in names


def test_a_fresh_venv_runs_the_demo_from_the_wheel(dist: Path, tmp_path: Path) -> None:
    """pip installs the wheel into a new venv, whose ``redlight demo`` runs to the end."""
    venv = tmp_path / "venv"
    # Outside the checkout and without PYTHONPATH: pip must not find a redlight already there
    # (an egg-info in the checkout), and nothing from it can be imported by accident.
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")}
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel(dist))]
    run(pip, cwd=tmp_path, env={**env, **index_settings()}, timeout=INSTALL_S)
    out = run([str(venv / "bin" / "redlight"), "demo"], cwd=tmp_path, env=env, timeout=DEMO_S)
    assert "online" in out  # the daemon in the demo came up; run() checked the exit code
    assert (
        run([str(venv / "bin" / "redlight"), "print-unit"], cwd=tmp_path, env=env)
        == UNIT.read_text()
    )
    example = run(
        [str(venv / "bin" / "redlight"), "print-example", "tasmota"], cwd=tmp_path, env=env
    )
    assert example == (ROOT / "config" / "examples" / "tasmota.toml").read_text()
    run([str(venv / "bin" / "redlight-bench"), "--help"], cwd=tmp_path, env=env)
    python = str(venv / "bin" / "python")
    gone = subprocess.run(
        [python, "-c", "import bench"], cwd=tmp_path, env=env, capture_output=True, check=False
    )
    assert gone.returncode != 0  # no top-level `bench` in site-packages


def index_settings() -> dict[str, str]:
    """pip's settings from this environment (the index to install from), nothing else."""
    return {key: value for key, value in os.environ.items() if key.startswith("PIP_")}


#: The README's Core/Linux lines that cannot run here, and why.
NOT_HERE = {
    "sudo apt-get": "installs system packages",
    "sudo PIPX_HOME": "pipx is not installed here (the venv route below is the same result)",
    "sudo nano": "an editor",
    "sudo sh -c 'umask 077; systemd-ask-password": "asks on a terminal",
    "sudo sed": "checked against the unit in tests/unit/test_install_docs.py",
    "sudo systemctl": "no systemd here; the unit is checked by systemd-analyze in test_systemd",
}


def test_the_readme_venv_lines_run_as_written_in_a_scratch_root(tmp_path: Path) -> None:
    """The Core/Linux lines, /opt, /etc and /usr/local/bin moved under a scratch root, all run."""
    root = tmp_path / "root"
    # What any systemd machine has already.
    for directory in ("usr/local/bin", "opt", "etc/systemd/system"):
        (root / directory).mkdir(parents=True)
    env = {**os.environ, "PATH": f"{root / 'usr/local/bin'}:{os.environ['PATH']}"}
    env = {key: value for key, value in env.items() if not key.startswith("REDLIGHT_")}
    env.pop("PYTHONPATH", None)
    ran = []
    for line in core_lines():
        if any(line.startswith(prefix) for prefix in NOT_HERE):
            continue
        command = line.removeprefix("sudo ")
        for place in ("/opt/", "/etc/", "/usr/local/bin"):
            command = command.replace(place, f"{root}{place}")
        run(["sh", "-c", command], cwd=ROOT, env=env, timeout=INSTALL_S)
        ran.append(line.split()[1])
    assert ran == ["python3", "/opt/redlight/bin/pip", "ln", "mkdir", "sh", "check", "sh"]
    assert (root / "usr/local/bin/redlight").resolve() == root / "opt/redlight/bin/redlight"
    assert (root / "etc/systemd/system/redlight.service").read_text() == UNIT.read_text()
    assert "[panels.hip_left]" in (root / "etc/redlight/config.toml").read_text()
