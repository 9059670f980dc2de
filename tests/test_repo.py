"""The repository's own promises: CI runs README's test command; README links the sub-READMEs."""
import re

from conftest import ROOT


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_command = next(b.strip() for b in blocks if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_first_command_builds_the_sample_and_trains_on_two_processes():
    readme = (ROOT / "README.md").read_text()
    first = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "build_dataset" in b)
    assert first.startswith("python3 data/build_dataset.py && DATA_PATH=data/datasets/sample_sp1024 ")
    assert first.strip().endswith("torchrun --standalone --nproc_per_node=2 train_gpt.py")
    assert "(data/README.md)" in readme and "(records/README.md)" in readme


def test_trainer_stays_under_2700_lines_of_at_most_120_characters():
    """Counted in UTF-8 bytes, as byte-oriented tools count them (a '▁' is 3 bytes)."""
    lines = (ROOT / "train_gpt.py").read_bytes().splitlines()
    assert len(lines) <= 2700 and [i + 1 for i, line in enumerate(lines) if len(line) > 120] == []
