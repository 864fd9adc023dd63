"""`make bench`: rerun every benchmark, then regenerate benchmarks/RESULTS.md from benchmarks/results/.

On the 2-core CPU machine the whole run takes several hours (trade-off: 3 seeds × 10 methods, dedicated
models per λ); the trade-off script resumes from benchmarks/results/tradeoff.jsonl, so delete that file for a fresh run.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ("coverage.py", "overhead.py", "overhead.py --compiled", "cost.py", "threat_model.py", "attack_strength.py",
           "tradeoff.py", "noise_source.py", "floats.py", "finetune.py", "demo.py",
           "audit.py", "write_results.py")  # reason: audit.py audits the model demo.py trains
for script in SCRIPTS:
    print(f"== {script}", flush=True)
    name, *args = script.split()
    subprocess.run([sys.executable, str(HERE / name), *args], check=True)
