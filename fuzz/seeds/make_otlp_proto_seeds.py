#!/usr/bin/env python3
"""Regenerates fuzz/seeds/otlp_proto/ (run from the repository root; needs only python3).

Every seed is one selector byte followed by a protobuf ExportTraceServiceRequest or
ExportLogsServiceRequest body, the input format of the `otlp_proto` fuzz target:
selector 0x00 = traces, 0x01 = logs (the target reads only the low bit).

Sources:
- tests/fixtures/replay/*.otlprec: requests recorded by flagguard itself (prost-encoded,
  traces only); a few records are copied verbatim.
- tests/fixtures/otlp/*.json: the OTLP/JSON SDK fixtures (their "request" object), encoded
  to protobuf here with the field numbers of opentelemetry-proto's trace/logs/common/resource
  v1 messages. This is the only source of protobuf *logs* seeds.
"""

import base64
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fuzz" / "seeds" / "otlp_proto"
TRACES, LOGS = b"\x00", b"\x01"
# (file, record index): a healthy request, and one whose payments spans have status ERROR.
RECORDS = [("healthy.otlprec", 0), ("regression.otlprec", 90)]


def varint(n):
    n &= (1 << 64) - 1  # int64 negatives: ten-byte two's complement, as prost writes them
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def f_varint(field, n, always=False):
    return key(field, 0) + varint(n) if (n or always) else b""


def f_fixed64(field, n):
    return key(field, 1) + struct.pack("<Q", n) if n else b""


def f_fixed32(field, n):
    return key(field, 5) + struct.pack("<I", n) if n else b""


def f_bytes(field, data, always=False):
    return key(field, 2) + varint(len(data)) + data if (data or always) else b""


def f_str(field, s):
    return f_bytes(field, (s or "").encode())


def f_msg(field, body):
    # Sub-messages are written even when empty (presence matters: `body: {}`).
    return f_bytes(field, body, always=True)


def num(v):
    return int(v) if v not in (None, "") else 0


def hexid(v):
    return bytes.fromhex(v) if v else b""


def any_value(v):
    if "stringValue" in v:
        return f_bytes(1, v["stringValue"].encode(), always=True)
    if "boolValue" in v:
        return f_varint(2, int(bool(v["boolValue"])), always=True)
    if "intValue" in v:
        return f_varint(3, int(v["intValue"]), always=True)
    if "doubleValue" in v:
        return key(4, 1) + struct.pack("<d", float(v["doubleValue"]))
    if "arrayValue" in v:
        return f_msg(5, b"".join(f_msg(1, any_value(x)) for x in v["arrayValue"].get("values", [])))
    if "kvlistValue" in v:
        return f_msg(6, b"".join(f_msg(1, key_value(x)) for x in v["kvlistValue"].get("values", [])))
    if "bytesValue" in v:
        return f_bytes(7, base64.b64decode(v["bytesValue"]), always=True)
    return b""


def key_value(kv):
    out = f_str(1, kv.get("key"))
    if "value" in kv:
        out += f_msg(2, any_value(kv["value"]))
    return out


def attributes(field, attrs):
    return b"".join(f_msg(field, key_value(kv)) for kv in attrs or [])


def resource(r):
    return attributes(1, r.get("attributes")) + f_varint(2, num(r.get("droppedAttributesCount")))


def scope(s):
    return f_str(1, s.get("name")) + f_str(2, s.get("version")) + attributes(3, s.get("attributes"))


def event(e):
    return f_fixed64(1, num(e.get("timeUnixNano"))) + f_str(2, e.get("name")) + attributes(3, e.get("attributes"))


def status(s):
    return f_str(2, s.get("message")) + f_varint(3, num(s.get("code")))


def span(s):
    out = f_bytes(1, hexid(s.get("traceId"))) + f_bytes(2, hexid(s.get("spanId"))) + f_str(3, s.get("traceState"))
    out += f_bytes(4, hexid(s.get("parentSpanId"))) + f_str(5, s.get("name")) + f_varint(6, num(s.get("kind")))
    out += f_fixed64(7, num(s.get("startTimeUnixNano"))) + f_fixed64(8, num(s.get("endTimeUnixNano")))
    out += attributes(9, s.get("attributes")) + b"".join(f_msg(11, event(e)) for e in s.get("events", []))
    if "status" in s:
        out += f_msg(15, status(s["status"]))
    return out + f_fixed32(16, num(s.get("flags")))


def log_record(r):
    out = f_fixed64(1, num(r.get("timeUnixNano"))) + f_varint(2, num(r.get("severityNumber"))) + f_str(3, r.get("severityText"))
    if "body" in r:
        out += f_msg(5, any_value(r["body"]))
    out += attributes(6, r.get("attributes")) + f_varint(7, num(r.get("droppedAttributesCount"))) + f_fixed32(8, num(r.get("flags")))
    out += f_bytes(9, hexid(r.get("traceId"))) + f_bytes(10, hexid(r.get("spanId")))
    return out + f_fixed64(11, num(r.get("observedTimeUnixNano"))) + f_str(12, r.get("eventName"))


def scoped(items_field, item, s):
    out = f_msg(1, scope(s["scope"])) if "scope" in s else b""
    return out + b"".join(f_msg(2, item(x)) for x in s.get(items_field, [])) + f_str(3, s.get("schemaUrl"))


def resource_entry(scopes_field, items_field, item, r):
    out = f_msg(1, resource(r["resource"])) if "resource" in r else b""
    out += b"".join(f_msg(2, scoped(items_field, item, s)) for s in r.get(scopes_field, []))
    return out + f_str(3, r.get("schemaUrl"))


def traces_request(req):
    return b"".join(f_msg(1, resource_entry("scopeSpans", "spans", span, r)) for r in req.get("resourceSpans", []))


def logs_request(req):
    return b"".join(f_msg(1, resource_entry("scopeLogs", "logRecords", log_record, r)) for r in req.get("resourceLogs", []))


def otlprec_records(path):
    data = path.read_bytes()
    i = 0
    while i + 13 <= len(data):
        _arrival, signal, length = struct.unpack("<QBI", data[i : i + 13])
        yield signal, data[i + 13 : i + 13 + length]
        i += 13 + length


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, index in RECORDS:
        signal, body = list(otlprec_records(ROOT / "tests" / "fixtures" / "replay" / name))[index]
        prefix = TRACES if signal == 1 else LOGS
        (OUT / f"replay-{pathlib.Path(name).stem}-{index}.bin").write_bytes(prefix + body)
    for path in sorted((ROOT / "tests" / "fixtures" / "otlp").glob("*.json")):
        fixture = json.loads(path.read_text())
        if fixture["signal"] == "traces":
            body = TRACES + traces_request(fixture["request"])
        else:
            body = LOGS + logs_request(fixture["request"])
        (OUT / f"{path.stem}.bin").write_bytes(body)


if __name__ == "__main__":
    main()
