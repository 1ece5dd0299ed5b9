"""The pinned-CPU launcher runs a script as `python SCRIPT` would, with the pinned variables set before it starts."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT
from wsss_core.pinned_cpu import PINNED_CPU_ENV


def test_the_script_runs_as_main_with_its_arguments_and_the_pinned_environment(tmp_path):
    (tmp_path / "helper.py").write_text("VALUE = 'found beside the script'\n")
    script = tmp_path / "show.py"
    script.write_text(
        "import json, os, sys\n"
        "import helper\n"
        "names = " + repr(sorted(PINNED_CPU_ENV)) + "\n"
        "if __name__ == '__main__':\n"
        "    env = {n: os.environ.get(n) for n in names}\n"
        "    print(json.dumps({'argv': sys.argv, 'env': env, 'helper': helper.VALUE}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "16", "ATEN_CPU_CAPABILITY": "avx512"}  # the host's own
    result = subprocess.run(
        [sys.executable, "-m", "wsss_core.pinned_cpu", str(script), "--flag", "x"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    shown = json.loads(result.stdout)
    assert shown == {"argv": [str(script), "--flag", "x"], "env": PINNED_CPU_ENV, "helper": "found beside the script"}


def test_without_a_script_it_says_how_to_use_it():
    result = subprocess.run([sys.executable, "-m", "wsss_core.pinned_cpu"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "usage: python -m wsss_core.pinned_cpu SCRIPT" in result.stderr
