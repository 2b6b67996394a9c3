from typing import Any

from typing_extensions import Buffer

NULL: int
BOOLEAN: int
INT: int
LONG: int
STRING: int
BYTES: int
TIMESTAMP: int
ARRAY: int
MAP: int
ENUM: int
OPTION: int
RECORD: int

def decode(
    program: tuple[Any, ...], data: Buffer, start: int, view_tail: bool, /
) -> tuple[dict[str, Any], int, int, int]: ...
def encode(program: tuple[Any, ...], record: dict[str, Any], prefix: Buffer, /) -> bytes: ...
