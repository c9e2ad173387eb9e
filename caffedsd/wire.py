"""The few pieces of the protobuf wire format that caffemodel I/O needs.

A caffemodel is a serialized NetParameter whose bulk is packed float arrays.
Walking the outer messages by hand lets those arrays be read as zero-copy
numpy views and written straight from numpy buffers, where going through
protobuf message objects would copy every float (and ``extend`` from Python is
the slow path, about 2 s per 25M floats). Everything that is not a blob is
still parsed and built with real protobuf messages (see caffe_proto).
"""
from typing import NamedTuple

from .errors import WireError  # noqa: F401 (raised here; callers name it wire.WireError)

VARINT, I64, LEN, I32 = 0, 1, 2, 5


class Field(NamedTuple):
    number: int
    wire_type: int
    start: int  # first byte of the tag
    value_start: int  # first byte of the payload (LEN) or value
    end: int  # one past the last byte of the field
    value: int  # the integer of a VARINT field, else the payload length


def read_varint(buf, pos, end):
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError(f"varint runs past the end at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def iter_fields(buf, start=0, end=None):
    """Yield the Fields of the message held in buf[start:end], in file order."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        key, value_start = read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire_type == VARINT:
            value, field_end = read_varint(buf, value_start, end)
        elif wire_type == LEN:
            value, value_start = read_varint(buf, value_start, end)
            field_end = value_start + value
        elif wire_type == I32:
            value, field_end = 4, value_start + 4
        elif wire_type == I64:
            value, field_end = 8, value_start + 8
        else:
            raise WireError(f"unsupported wire type {wire_type} at byte {pos}")
        if field_end > end:
            raise WireError(f"field {number} at byte {pos} runs past the end of its message (byte {end})")
        yield Field(number, wire_type, pos, value_start, field_end, value)
        pos = field_end


def encode_varint(value):
    value = int(value)
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def len_header(number, length):
    """Tag and length prefix of a LEN field of ``length`` payload bytes."""
    return encode_varint(number << 3 | LEN) + encode_varint(length)
