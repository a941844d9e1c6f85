"""``touch(path, ...)``: a callable with a side effect (it creates ``path``; other arguments are
ignored), for the tests that no config can make Hydra build what ``conf/`` does not declare."""

from pathlib import Path


def touch(path: str, *args: object, **kwargs: object) -> None:
    Path(path).touch()
