#!/usr/bin/python3
"""A minimal TensorBoard event-file reader, for tests/core/test_tensorboard.cpp and
tests/train/test_tensorboard_run.cpp; written independently of mllm from the TFRecord format
(tensorflow/core/lib/io/record_writer.cc: uint64 length, masked crc32c of it, data, masked crc32c
of the data) and TensorFlow's event.proto / summary.proto (Event: wall_time 1 double, step 2
int64, file_version 3 string, summary 5; Summary: value 1; Value: tag 1 string, simple_value 2
float), decoding the protobuf wire format by hand. Plain Python, no dependencies.

usage: tfevents_reader.py FILE_OR_DIR   -> JSON: {"events": [{"wall_time", "step",
        "file_version"?, "scalars": {tag: value}}...]} over the directory's event files in name
        order; exits 1 with a message on a bad CRC or a malformed record.
"""
import json
import os
import struct
import sys


def crc32c(data):
    # Bit by bit, straight from the definition: reflected Castagnoli polynomial 0x82F63B78.
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def fields(buf):
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = varint(buf, i)
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
        yield field, wire, v


def event(data):
    out = {"step": 0, "scalars": {}}
    for field, wire, v in fields(data):
        if field == 1 and wire == 1:
            out["wall_time"] = struct.unpack("<d", v)[0]
        elif field == 2 and wire == 0:
            out["step"] = v - (1 << 64) if v >= 1 << 63 else v
        elif field == 3 and wire == 2:
            out["file_version"] = v.decode()
        elif field == 5 and wire == 2:
            for f, w, value in fields(v):
                if f != 1 or w != 2:
                    continue
                tag, simple = None, None
                for vf, vw, x in fields(value):
                    if vf == 1 and vw == 2:
                        tag = x.decode()
                    elif vf == 2 and vw == 5:
                        simple = struct.unpack("<f", x)[0]
                out["scalars"][tag] = simple
    return out


def read(path):
    with open(path, "rb") as f:
        buf = f.read()
    i, events = 0, []
    while i < len(buf):
        if i + 12 > len(buf):
            raise ValueError("%s: truncated record header at byte %d" % (path, i))
        header = buf[i:i + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", buf[i + 8:i + 12])
        if crc != masked(header):
            raise ValueError("%s: bad length CRC at byte %d" % (path, i))
        data = buf[i + 12:i + 12 + length]
        (dcrc,) = struct.unpack("<I", buf[i + 12 + length:i + 16 + length])
        if dcrc != masked(data):
            raise ValueError("%s: bad data CRC at byte %d" % (path, i))
        events.append(event(data))
        i += 16 + length
    return events


def main():
    target = sys.argv[1]
    files = ([os.path.join(target, f) for f in sorted(os.listdir(target))
              if f.startswith("events.out.tfevents.")] if os.path.isdir(target) else [target])
    events = []
    try:
        for f in files:
            events += read(f)
    except ValueError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"files": len(files), "events": events}))


if __name__ == "__main__":
    main()
