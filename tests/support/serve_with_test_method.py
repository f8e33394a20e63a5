"""Run a real uvicorn server whose registry also holds the test method (for multi-process tests).

    python -m tests.support.serve_with_test_method PORT
Settings come from the TWOFOLD_* environment, as for `twofold serve`.
"""

from __future__ import annotations

import sys

import uvicorn

from twofold.container import build
from twofold.methods.registry import MethodRegistry
from twofold.web.app import create_app

from .methods import KnownCodeMethod


def main() -> None:
    port = int(sys.argv[1])
    app = create_app(build(registry=MethodRegistry([KnownCodeMethod()])), housekeeping=False)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
