"""README.md stays the user's manual: it lists every command-line flag."""

import re
from pathlib import Path

from nmt.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_flag_is_documented():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    flags = {opt for p in sub.choices.values() for a in p._actions for opt in a.option_strings if opt.startswith("--")}
    missing = sorted(f for f in flags - {"--help"} if not re.search(re.escape(f) + r"(?![\w-])", README))
    assert not missing, f"README.md does not mention {missing}"
