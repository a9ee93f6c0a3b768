"""Read what W&B wrote: the records of an offline `run-*.wandb` file.

The file is a LevelDB-log-framed stream: a 7-byte file header (":W&B", 2-byte magic, version), then
32 KiB blocks of records, each with a 7-byte header (crc32c, little-endian length, type: 1 FULL,
2 FIRST, 3 MIDDLE, 4 LAST); zeros pad a block's tail. Each reassembled record is a
`wandb.proto.wandb_internal_pb2.Record`.
"""

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, position = [], b"", HEADER
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # zero padding at the end of a block
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if kind == 0 and length == 0:  # zeros up to the end of the block: the next block, or the file's end
            position += left
            continue
        chunk = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == FULL:
            records.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            records.append(pending + chunk)
    return [wandb_internal_pb2.Record.FromString(raw) for raw in records]


def read_finished_records(path: Path, timeout: float = 120.0) -> list:
    """The records once the run's last one (`exit`) is on disk: `run.finish()` can return before
    W&B's writer has flushed the file's tail."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path)
        if records and records[-1].WhichOneof("record_type") == "exit" or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def run_contents(path: Path) -> dict:
    """{"config": {...}, "history": [{key: value}, ...], "summary": {...}} from one finished run file."""
    config, history, summary = {}, [], {}
    for record in read_finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "run":
            config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return {"config": config, "history": history, "summary": summary}
