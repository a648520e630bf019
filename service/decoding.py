"""Compressed frames are decoded in a child process, so that a codec's crash ends the child, not the API worker.

The C and C++ codecs pydicom decodes with are not hardened against hostile input: GDCM aborts the whole process on
some corrupt JPEG baseline and JPEG-LS streams (an uncaught C++ exception; two changed bytes in a Huffman table are
enough), and with it every request the worker holds. So each process that decodes keeps one child that does
nothing else (`python -m service.decoding`): a frame goes there as its codestream (with the header's pixel
options) and comes back as an array. The child is kept for the next frame and replaced when it dies or takes
longer than `TIMEOUT_S`; the frame is then refused like any corrupt stream.

Nothing the child sends is unpickled: a codec exploited into running code in the child could otherwise run it in
the worker too. Messages are a JSON header and raw bytes, and an array comes back only in a dtype and shape the
parent expects. The child also reads the size the codestream declares (`service.codestreams`, the codec libraries'
header parsers) before decoding, so nothing in the worker parses a hostile codestream. Native pixel data never
comes here.
"""

from __future__ import annotations

import atexit
import json
import logging
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import UID, JPEGExtended12Bit

from service import codestreams

__all__ = ["TIMEOUT_S", "Decoded", "DecoderFailed", "decode_frame"]

logger = logging.getLogger("medsamix")

# The longest one frame may take (a 4096 x 4096 JPEG 2000 frame decodes in a few seconds on two cores).
TIMEOUT_S = 120.0
# The dtypes a decoded frame may come back in (pydicom's decoders give unsigned or signed integers).
DTYPES = frozenset({"|u1", "|i1", "<u2", "<i2", "<u4", "<i4"})
_ROOT = Path(__file__).resolve().parent.parent  # where `python -m service.decoding` finds the package

# pydicom's GDCM and Pillow plugins refuse 12-bit JPEG Extended; GDCM itself decodes it (see service/jpeg12.py).
get_decoder(JPEGExtended12Bit).add_plugin("gdcm-12-bit", ("service.jpeg12", "decode_frame"))


class DecoderFailed(Exception):
    """The frame could not be decoded: the codec refused it, or died or hung on it (the child was replaced)."""


@dataclass(frozen=True)
class Decoded:
    """A decoded frame (HxW or HxWxS) and the photometric interpretation the decoder left it in; or, for a
    JPEG-family codestream whose declared size is not the header's, that size and no pixels."""

    array: np.ndarray | None
    photometric: str
    declared: tuple[int, int] | None = None


def decode_frame(syntax: UID, codestream: bytes, options: dict[str, Any]) -> Decoded:
    """One encapsulated frame's `codestream` under `syntax`, decoded in the child with pydicom's pixel `options`
    (rows, columns, samples, bits, photometric interpretation, ...). Raises DecoderFailed."""
    header = {"syntax": str(syntax), "options": {k: _plain(v) for k, v in options.items() if k != "extended_offsets"}}
    return _CHILD.run(header, codestream)


def _plain(value: Any) -> Any:
    """An option as JSON holds it (pydicom gives int and str subclasses)."""
    return int(value) if isinstance(value, int) else str(value)


def _decode_here(header: dict[str, Any], codestream: bytes) -> tuple[dict[str, Any], bytes]:
    """What the child does with one frame: (answer header, pixel bytes)."""
    syntax, options = UID(header["syntax"]), header["options"]
    if codestreams.has_codestream_header(syntax):
        declared = codestreams.declared_size(syntax, codestream)
        if declared != (options["rows"], options["columns"]):
            return {"status": "declared", "declared": list(declared)}, b""
    array, meta = get_decoder(syntax).as_array(
        encapsulate([codestream]),
        index=0,
        transfer_syntax_uid=syntax,  # type: ignore[arg-type]  # pydicom types **kwargs as DecodeOptions
        pixel_keyword="PixelData",  # type: ignore[arg-type]  # pydicom types **kwargs as DecodeOptions
        **{**options, "number_of_frames": 1},
    )
    array = np.ascontiguousarray(array)
    photometric = str(meta.get("photometric_interpretation", ""))
    return {"status": "decoded", "dtype": array.dtype.str, "shape": list(array.shape), "photometric": photometric}, (
        array.tobytes()
    )


def _serve(connection: Connection) -> None:
    """The child's loop: decode each frame it is sent until its parent goes."""
    while True:
        try:
            header = json.loads(connection.recv_bytes())
            codestream = connection.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            answer, pixels = _decode_here(header, codestream)
        except Exception as error:  # the codec refused the stream; its text is not forwarded (it may quote values)
            answer, pixels = {"status": "refused", "error": type(error).__name__}, b""
        connection.send_bytes(json.dumps(answer).encode())
        connection.send_bytes(pixels)


def _array(answer: dict[str, Any], pixels: bytes, options: dict[str, Any]) -> np.ndarray:
    """The child's pixels as an array, if they are exactly what a frame of `options` decodes to."""
    dtype, shape = answer.get("dtype"), tuple(answer.get("shape", ()))
    samples = options.get("samples_per_pixel", 1)
    expected = (options["rows"], options["columns"]) + ((samples,) if samples > 1 else ())
    if dtype not in DTYPES or shape != expected or len(pixels) != np.dtype(dtype).itemsize * np.prod(shape):
        raise DecoderFailed("the decoder answered pixels that are not a frame of the header's size")
    return np.frombuffer(pixels, dtype).reshape(shape)


class _Child:
    """This process's decoding child, started on first use; one frame at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None

    def run(self, header: dict[str, Any], codestream: bytes) -> Decoded:
        with self._lock:
            connection = self._start()
            try:
                connection.send_bytes(json.dumps(header).encode())
                connection.send_bytes(codestream)
                if not connection.poll(TIMEOUT_S):
                    raise TimeoutError
                answer = json.loads(connection.recv_bytes())
                pixels = connection.recv_bytes()
            except (EOFError, OSError, TimeoutError, ValueError) as error:
                self._stop()
                logger.warning(
                    "the decoding process %s on a frame; another is started for the next one",
                    "hung" if isinstance(error, TimeoutError) else "died",
                )
                raise DecoderFailed("the decoder died or hung on the frame") from None
        status = answer.get("status") if isinstance(answer, dict) else None
        if status == "declared":
            rows, columns = (int(n) for n in answer["declared"])
            return Decoded(None, "", (rows, columns))
        if status != "decoded":
            raise DecoderFailed("the decoder refused the frame")
        return Decoded(_array(answer, pixels, header["options"]), str(answer.get("photometric", "")))

    def _start(self) -> Connection:
        if self._process is None or self._process.poll() is not None or self._connection is None:
            self._stop()
            ours, theirs = socket.socketpair()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "service.decoding", str(theirs.fileno())],
                cwd=_ROOT,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
            theirs.close()
            self._connection = Connection(ours.detach())
        return self._connection

    def _stop(self) -> None:
        """Close the child: its loop ends on the closed connection; one that does not end (it hung) is killed."""
        if self._connection is not None:
            self._connection.close()
        if self._process is not None:
            try:
                self._process.wait(1)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = self._connection = None


_CHILD = _Child()
atexit.register(_CHILD._stop)

if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
