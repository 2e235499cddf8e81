"""README.md stays the user's manual: it lists every command-line flag."""

import re
from pathlib import Path

from nmt.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_flag_is_documented():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    flags = {opt for p in sub.choices.values() for a in p._actions for opt in a.option_strings if opt.startswith("--")}
    missing = sorted(f for f in flags - {"--help"} if not re.search(re.escape(f) + r"(?![\w-])", README))
    assert not missing, f"README.md does not mention {missing}"


def test_readme_is_a_valid_space_card():
    from huggingface_hub import SpaceCard

    card = SpaceCard(README)
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.python_version == "3.11"  # quoted in the YAML, so not the float 3.11
    assert "translation" in card.data.tags


def test_the_two_setup_commands_come_first():
    body = README.split("---", 2)[2]
    first_block = body.split("```bash", 1)[1].split("```", 1)[0]
    assert "pip install -r requirements.txt && python app.py" in first_block
    assert "python -m pytest" in first_block


def test_the_package_declares_the_requirements_and_the_nmt_command():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip()]
    assert project["dependencies"] == pins
    assert project["scripts"] == {"nmt": "nmt.cli:run"}
