"""A non-editable install carries what the workers need: the region policies (BENCHMARKS.md finding 9)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.harness import REPO


def test_wheel_ships_the_region_policies_and_the_bureau_finds_them(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path / "dist"), str(REPO)], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("gongji-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(site)
    shipped = {Path(n).name for n in names if n.startswith("policies/") and n.endswith(".yaml")}
    assert shipped == {p.name for p in (REPO / "policies").glob("*.yaml")}
    assert not any(n.startswith("tests/") for n in names), "test-only policies must not ship"
    # Run from elsewhere with only the unpacked wheel on the path: no repository to fall back on.
    out = subprocess.run([sys.executable, "-I", "-c",
                          "import sys; sys.path.insert(0, sys.argv[1]);"
                          "from services.shared.policy import DEFAULT_POLICY_DIR, load_policies;"
                          "print(DEFAULT_POLICY_DIR); print(' '.join(sorted(load_policies())))", str(site)],
                         check=True, capture_output=True, text=True, cwd=tmp_path).stdout.splitlines()
    assert Path(out[0]).is_relative_to(site)
    assert out[1].split() == sorted(p.stem for p in (REPO / "policies").glob("*.yaml"))
