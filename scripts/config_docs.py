#!/usr/bin/env python
"""Write docs/config.md, the configuration reference, from regtool/config.py's field metadata.

Usage: .venv/bin/python scripts/config_docs.py
"""

from pathlib import Path

from regtool.config import config_reference_markdown

if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    out.write_text(config_reference_markdown(), encoding="utf-8")
    print(f"wrote {out}")
