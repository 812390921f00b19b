"""TeXML, Telnyx's answer markup: the document that opens a call's bidirectional media stream.

``<Connect><Stream bidirectionalMode="rtp" bidirectionalCodec="PCMU">``: without ``rtp`` Telnyx
expects MP3 files back (its default "mp3" mode) and our 20 ms μ-law chunks would not play; PCMU
at 8 kHz is the core's own format, so nothing is transcoded on either side. Verbs after
``</Connect>`` run when the stream stops (``<Connect>`` is synchronous), so, as on Twilio, the
fallback is heard exactly when the bridge gives up on a call. — PROTOCOLS-carriers.md, Telnyx §1.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

VOICE_PATH = "/telnyx/voice"
STATUS_PATH = "/telnyx/status"  # Call Control webhooks of outbound calls (JSON): progress and AMD
MEDIA_STREAM_PATH = "/telnyx/media-stream"


def connect_stream(stream_url: str, parameters: Mapping[str, str], fallback: str) -> str:
    response = ET.Element("Response")
    connect = ET.SubElement(response, "Connect")
    stream = ET.SubElement(connect, "Stream", url=stream_url, bidirectionalMode="rtp",
                           bidirectionalCodec="PCMU")
    for name, value in parameters.items():
        if value:
            ET.SubElement(stream, "Parameter", name=name, value=value)
    if fallback:
        ET.SubElement(response, "Say").text = fallback
    ET.SubElement(response, "Hangup")
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")
