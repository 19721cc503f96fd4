"""``python -m netreactor`` and the ``netreactor`` console script.

With no arguments this runs the self-check (boots the echo example on
loopback TCP and a Unix socket and tests it); see :mod:`netreactor.cli` for
the commands.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
