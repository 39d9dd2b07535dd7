"""The installed ``dpda`` command."""

from __future__ import annotations

import subprocess
import sys

from dpda import __version__


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpda", *args], capture_output=True, text=True, timeout=120)


def test_version_and_help():
    assert run("--version").stdout.strip() == f"dpda {__version__}"
    help_text = run("--help").stdout
    assert "aligners" in help_text and "usage: dpda" in help_text


def test_aligners_lists_every_method():
    listing = run("aligners").stdout
    for name in ("pcgrad", "gradvac", "cagrad", "mean", "sum", "upgrad", "nash_mtl"):
        assert f"\n{name} " in f"\n{listing}"


def test_unknown_command_is_an_error():
    completed = run("trian")
    assert completed.returncode == 2 and "invalid choice" in completed.stderr


def test_validate_reports_counts_and_broken_files(tmp_path):
    import numpy as np
    import soundfile as sf

    (tmp_path / "flac").mkdir()
    lines = []
    for i, (label, attack) in enumerate([("bonafide", "-"), ("spoof", "A01"), ("spoof", "A02")]):
        sf.write(tmp_path / "flac" / f"LA_T_{i}.flac", np.full(1600, 0.1, dtype=np.float32), 16000)
        lines.append(f"LA_0001 LA_T_{i} - {attack} {label}")
    protocol = tmp_path / "protocol.txt"
    protocol.write_text("\n".join(lines) + "\n")
    completed = run("validate", "asvspoof2019", str(protocol))
    assert completed.returncode == 0, completed.stderr
    assert "3 trials, 1 bona fide, 2 spoof, 2 attack(s): A01 A02" in completed.stdout
    assert "all 3 files decode" in completed.stdout
    (tmp_path / "flac" / "LA_T_2.flac").write_bytes(b"")
    completed = run("validate", "asvspoof2019", str(protocol), "--root", str(tmp_path))
    assert completed.returncode == 1 and "LA_T_2.flac: empty file" in completed.stderr
    protocol.write_text("LA_0001 LA_T_0 - - real\n")
    completed = run("validate", "asvspoof2019", str(protocol))
    assert completed.returncode == 2 and "protocol.txt:1" in completed.stderr and "unknown label" in completed.stderr


def test_convert_fairseq_writes_a_folder_and_refuses_to_overwrite(tmp_path):
    import torch
    from test_fairseq_convert import XLSR_LIKE, fairseq_names, model_cfg, random_model

    model = random_model(XLSR_LIKE)
    torch.save({"cfg": {"model": model_cfg(model)}, "model": fairseq_names(model)}, tmp_path / "xlsr.pt")
    completed = run("convert-fairseq", str(tmp_path / "xlsr.pt"), str(tmp_path / "hf"))
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "hf" / "config.json").is_file()
    again = run("convert-fairseq", str(tmp_path / "xlsr.pt"), str(tmp_path / "hf"))
    assert again.returncode == 2 and "hf" in again.stderr
