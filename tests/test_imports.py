"""The stages that check their inputs before running a model import without Keras.

infer and tune report a bad input in one line; loading Keras first would cost
seconds and print TensorFlow's start-up lines on stderr.
"""

from __future__ import annotations

import subprocess
import sys

LIGHT = (
    "lesionseg.config",
    "lesionseg.cli",
    "lesionseg.data.check",
    "lesionseg.evaluation.evaluate",
    "lesionseg.inference.infer",
    "lesionseg.inference.tune",
    "lesionseg.runtime",
    "lesionseg.training.train",
)


def test_stages_import_without_keras():
    code = f"import sys\nfor m in {LIGHT!r}: __import__(m)\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'keras'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
