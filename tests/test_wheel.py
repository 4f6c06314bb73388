"""The built wheel holds every file the installed package reads: each kernel source and header (and each
compiles with NVRTC from where the wheel put it) and the report notebook.

The wheel is built from a copy of the project (so no build/ or egg-info lands in the checkout), installed
with pip into a folder of its own, and inspected by a fresh interpreter in isolated mode (-I: no
PYTHONPATH, no current directory) started outside the repository, so nothing can come from the source tree.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "src" / "gpt2pipe" / "ops" / "kernels"
NOTEBOOK = Path("notebooks") / "report.ipynb"  # inside the gpt2pipe package

pytestmark = pytest.mark.slow

INSPECT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import gpt2pipe
from gpt2pipe.ops import cuda
from pathlib import Path
report = {"package": gpt2pipe.__file__, "kernel_dir": str(cuda.kernel_dir()),
          "kernel_files": sorted(p.name for p in cuda.kernel_dir().iterdir()),
          "missing": cuda.missing_sources(), "compiled": [],
          "notebook": (Path(gpt2pipe.__file__).parent / sys.argv[2]).is_file()}
if sys.argv[3] == "compile":
    for path in cuda.sources():
        cuda.compile_check(path)
        report["compiled"].append(path.name)
print(json.dumps(report))
"""


def _run(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """site folder holding the installed wheel."""
    work = tmp_path_factory.mktemp("wheel")
    project = work / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "LICENSE.md", "LICENSE.txt"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # the environment's own setuptools when it has one (offline GPU machines); else pip fetches it
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(work / "dist"), str(project),
         cwd=work)
    wheel = next((work / "dist").glob("gpt2pipe-*.whl"))
    site = work / "site"
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel),
         cwd=work)
    return site


def _inspect(site: Path, compile_kernels: bool) -> dict:
    out = _run(sys.executable, "-I", "-c", INSPECT, str(site), str(NOTEBOOK), "compile" if compile_kernels else "-",
               cwd=site.parent)
    return json.loads(out.strip().splitlines()[-1])


def test_the_wheel_ships_every_kernel_source_and_they_compile(installed_wheel):
    pytest.importorskip("cupy", reason="CuPy (with NVRTC) is needed to compile the kernels")
    report = _inspect(installed_wheel, compile_kernels=True)
    assert Path(report["package"]).is_relative_to(installed_wheel), report["package"]  # not the source tree
    assert Path(report["kernel_dir"]).is_relative_to(installed_wheel)
    assert report["missing"] == []
    wanted = sorted(p.name for p in KERNELS.iterdir() if p.is_file())
    assert report["kernel_files"] == wanted  # every .cu, .cuh and the README, nothing lost
    assert report["compiled"] == sorted(p.name for p in KERNELS.glob("*.cu"))


def test_the_wheel_ships_the_report_notebook(installed_wheel):
    if not (ROOT / "src" / "gpt2pipe" / NOTEBOOK).is_file():
        pytest.skip(f"src/gpt2pipe/{NOTEBOOK} is not in this source tree (the report stage adds it)")
    assert _inspect(installed_wheel, compile_kernels=False)["notebook"], f"the wheel lacks gpt2pipe/{NOTEBOOK}"
