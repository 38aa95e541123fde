"""Reading TensorBoard event files back, independently of the writer.

An event file is a sequence of TFRecords: ``uint64 length``, ``uint32``
masked CRC of the length, ``length`` bytes of a serialized ``Event`` proto,
``uint32`` masked CRC of the data. We walk that framing ourselves and decode
each record with the ``Event`` message definition (shipped with tensorboardX),
so the test does not trust the writer's own code path.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import numpy as np


def read_events(log_dir: str | Path) -> list[Any]:
    """Every ``Event`` of every ``events.out.tfevents.*`` file under ``log_dir``, in file order."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"))
    assert files, f"no event files under {log_dir}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            pos += 8 + 4  # length, its CRC
            record = data[pos : pos + length]
            assert len(record) == length, f"truncated record in {path}"
            pos += length + 4  # data, its CRC
            event = Event()
            event.ParseFromString(record)
            events.append(event)
    return events


def scalars(events: list[Any]) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the scalar summaries."""
    out: dict[str, list[tuple[int, float]]] = {}
    for event in events:
        if event.HasField("summary"):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def images(events: list[Any]) -> dict[str, list[tuple[int, np.ndarray]]]:
    """``{tag: [(step, HWC uint8 array), ...]}`` of the image summaries (PNG decoded with Pillow)."""
    from PIL import Image

    out: dict[str, list[tuple[int, np.ndarray]]] = {}
    for event in events:
        if event.HasField("summary"):
            for value in event.summary.value:
                if value.HasField("image"):
                    img = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
                    out.setdefault(value.tag, []).append((event.step, img))
    return out


def texts(events: list[Any]) -> dict[str, list[tuple[int, str]]]:
    """``{tag: [(step, text), ...]}`` of the text-plugin summaries (tensorboardX adds ``/text_summary``)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for event in events:
        if event.HasField("summary"):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "text":
                    text = value.tensor.string_val[0].decode()
                    tag = value.tag.removesuffix("/text_summary")
                    out.setdefault(tag, []).append((event.step, text))
    return out


def hparams_session_start(events: list[Any]) -> dict[str, Any]:
    """The HParams plugin's session-start hyper-parameters ``{name: value}``."""
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    for event in events:
        if event.HasField("summary"):
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = HParamsPluginData()
                    data.ParseFromString(value.metadata.plugin_data.content)
                    out = {}
                    for name, v in data.session_start_info.hparams.items():
                        kind = v.WhichOneof("kind")
                        out[name] = getattr(v, kind)
                    return out
    raise AssertionError("no hparams session start in the event files")


def has_tag(events: list[Any], tag: str) -> bool:
    return any(v.tag == tag for e in events if e.HasField("summary") for v in e.summary.value)
