"""SRTP protection in place, on one process-wide scratch buffer.

pylibsrtp's ``Session.protect`` costs ~3 µs per 1200-byte packet of which ~1.3 µs is libsrtp:
the rest is a type check, an ``ffi.new("int *")``, a copy into the session's buffer and a copy
back out. The forwarding fan-out instead rewrites each copy
straight into :data:`SCRATCH`, calls libsrtp's own ``srtp_protect`` on it (through pylibsrtp's
cffi binding, same library and context) and hands a view of the result to ``sendto``, which
copies it into the kernel. Single-threaded use only: a packet must be sent before the next one
is written.
"""

from __future__ import annotations

from typing import Any

from .aiortc_compat import srtp_context
from .aiortc_compat import srtp_ffi as ffi
from .aiortc_compat import srtp_lib as lib

__all__ = ["MAX_PLAINTEXT", "SCRATCH", "SCRATCH_SIZE", "protect_in_place", "srtp_context"]

SCRATCH_SIZE = 2048
_MAX_TRAILER = 4 + 16 + 128  # SRTCP index + authentication tag + MKI: what protect may append
MAX_PLAINTEXT = SCRATCH_SIZE - _MAX_TRAILER

_buffer = ffi.new("char[]", SCRATCH_SIZE)
_length = ffi.new("int *")
#: Where outgoing packets are written, protected and sent from.
SCRATCH = memoryview(ffi.buffer(_buffer))

PROTECT_RTP: Any = lib.srtp_protect
PROTECT_RTCP: Any = lib.srtp_protect_rtcp


def protect_in_place(protect: Any, context: Any, length: int) -> int:
    """Protect ``SCRATCH[:length]`` (plaintext RTP with :data:`PROTECT_RTP`, RTCP with
    :data:`PROTECT_RTCP`); the protected length, or 0 when libsrtp refused or it does not fit."""
    if length > MAX_PLAINTEXT:
        return 0
    _length[0] = length
    if protect(context, _buffer, _length):
        return 0
    return _length[0]
