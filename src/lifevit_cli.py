"""The ``lifevit`` console script. A module of its own so that ``lifevit --help`` answers without importing torch:
while it is loaded, ``import lifevit`` defers its torch imports to the command that needs them."""

from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    from lifevit.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
