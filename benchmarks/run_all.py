"""`make bench`: regenerate every benchmark result under benchmarks/results/ (see RESULTS.md)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
for script, extra in (("overhead.py", []), ("cost.py", []), ("tradeoff.py", []), ("floats.py", [])):
    if (HERE / script).exists():
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *extra], check=True)
