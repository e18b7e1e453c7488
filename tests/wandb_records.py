"""Read an offline W&B run file (`offline-run-*/run-*.wandb`) in tests.

Offline runs keep their history, config and run record only in this file (a LevelDB-style log
of protobuf records in 32 KiB blocks, after a 7-byte ":W&B" header); wandb no longer ships a
Python reader for it.
"""

import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7  # CRC (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    payloads, pending, pos = [], b"", 7
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            payloads.append(pending + chunk)
            pending = b""
    return [pb.Record.FromString(p) for p in payloads]


def summarize(run_dir: Path) -> dict:
    """The run record (name, group, job type, tags), config keys and logged history keys."""
    files = list(Path(run_dir).glob("run-*.wandb"))
    assert len(files) == 1, files
    out = {"history_keys": set(), "config": {}, "run": None}
    for record in read_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update({u.key: u.value_json for u in record.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: u.value_json for u in record.config.update})
        elif kind == "history":
            # images and tables are logged as nested items: keep their top-level key
            out["history_keys"] |= {i.key or i.nested_key[0] for i in record.history.item}
    return out
