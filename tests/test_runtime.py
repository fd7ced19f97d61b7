"""Backend start-up: TensorFlow's native chatter is held back, every other stderr line passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lesionseg.runtime import backend_noise, cpu_computes_bfloat16, quiet_native_stderr

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796084939.753403   21338 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "E0000 00:00:1796084952.922922   21338 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
]


def test_start_up_chatter_is_recognised_and_nothing_else():
    assert all(backend_noise(line) for line in NOISE)
    assert not backend_noise("Fatal Python error: Segmentation fault")
    assert not backend_noise("ERROR case1/flair.nii.gz: not a 3D volume")


def test_native_writes_are_filtered_not_swallowed(capfd):
    with quiet_native_stderr():
        for line in [NOISE[0], "a real problem", NOISE[2]]:
            os.write(2, (line + "\n").encode())
    assert capfd.readouterr().err == "a real problem\n"


def test_lines_written_before_an_exception_still_reach_stderr(capfd):
    try:
        with quiet_native_stderr():
            os.write(2, b"why it failed\n")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert capfd.readouterr().err == "why it failed\n"
    os.write(2, b"after\n")  # fd 2 is the real stderr again
    assert capfd.readouterr().err == "after\n"


def test_a_command_on_this_machine_prints_no_cuda_chatter(tmp_path):
    """TensorFlow starts inside the quiet block: a CPU machine's user sees the log lines, nothing else."""
    code = ("from lesionseg.runtime import configure_backend; print(configure_backend(1))")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "tensorflow"
    assert not [line for line in proc.stderr.splitlines() if backend_noise(line)], proc.stderr


def test_cpu_flags_decide_native_bfloat16(tmp_path: Path):
    flags = tmp_path / "cpuinfo"
    flags.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert cpu_computes_bfloat16(flags) is False
    flags.write_text("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert cpu_computes_bfloat16(flags) is True
    assert cpu_computes_bfloat16(tmp_path / "missing") is None
