"""Type stubs for the compiled block cache (fastrnn/_memory.pyx)."""
from types import TracebackType
from typing import Any, Optional, Type

class cached_allocation:
    def __enter__(self) -> "cached_allocation": ...
    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> bool: ...

#: a PyCapsule of the kernels' scratch allocator (fastrnn._rnn connects it)
scratch_capsule: Any

def empty_cache() -> int: ...
def cache_info() -> dict[str, int]: ...
