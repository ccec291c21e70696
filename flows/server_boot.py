"""Entry point of the temporary Prefect server process that `stego` starts: it imports Prefect's
server app with the garbage collector paused (a quarter of that 2-3 s import here), then runs
uvicorn with the arguments Prefect itself uses for its temporary server."""

from __future__ import annotations

import gc
import sys


def main() -> None:
    """``python -m flows.server_boot UVICORN-ARGS...``."""
    gc.disable()
    import prefect.server.api.server  # noqa: F401 - the import that takes the time

    gc.freeze()
    gc.enable()
    from uvicorn.main import main as uvicorn_main

    sys.argv = ["uvicorn", *sys.argv[1:]]
    uvicorn_main()


if __name__ == "__main__":
    main()
