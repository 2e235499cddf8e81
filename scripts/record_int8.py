"""Record in checkpoints whether int8 search keeps their validation BLEU (``nmt.engines.int8``).

    python scripts/record_int8.py checkpoints/de-en-general [checkpoints/... ...]

Translates the validation set of the checkpoint's languages with fp32 and with int8 search (the
checkpoint's decoding settings) and writes ``"int8": {"valid_bleu_fp32", "valid_bleu_int8", ...}``
into its config.json, which makes int8 the default engine on a CPU when it is within 0.3 BLEU.
``scripts/export_bundled.py`` and training write the same record themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nmt.checkpoint import CONFIG  # noqa: E402
from nmt.data import read_parallel  # noqa: E402
from nmt.engines.int8 import int8_keeps_quality, measure_int8  # noqa: E402
from nmt.safe_io import atomic_output  # noqa: E402
from nmt.serving.translator import Translator  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k"))
    args = p.parse_args()
    for folder in map(Path, args.checkpoints):
        translator = Translator.load(folder, device="cpu")
        ck = translator.checkpoint
        sources, refs = read_parallel(f"{args.data}/val.{ck.src_lang}.gz", f"{args.data}/val.{ck.tgt_lang}.gz")
        record = measure_int8(translator, sources, refs)
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        config["int8"] = record
        with atomic_output(folder / CONFIG, "config") as fh:
            fh.write(json.dumps(config, indent=2) + "\n")
        print(f"{folder}: {record} -> int8 by default: {int8_keeps_quality(record)}")


if __name__ == "__main__":
    main()
