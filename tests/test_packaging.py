"""The wheel carries what the app needs at run time: migrations, the default config, prompts."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_migrations_config_and_prompts(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("tokentree-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "tokentree/cli.py" in names
    assert "tokentree/_data/config.toml" in names
    assert "tokentree/_data/prompts/gsm8k.txt" in names
    assert "tokentree/_data/prompts/story.txt" in names
    assert "tokentree/_data/migrations/env.py" in names
    assert any(n.startswith("tokentree/_data/migrations/versions/") and n.endswith(".py") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tokentree = tokentree.cli:entry" in zipfile.ZipFile(wheel).read(entry_points).decode()
