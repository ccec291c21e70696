"""Errors the command line turns into one-line messages."""

from __future__ import annotations


class InputError(Exception):
    """Bad input or usage: reported as ``error: <file>: <problem>`` with exit code 2."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str]]:
        """Pickle as (path, problem), without cause or context: an error raised on a Dask
        worker reaches the client as the same one-line InputError (exit 2)."""
        return (type(self), (self.path, self.problem))
