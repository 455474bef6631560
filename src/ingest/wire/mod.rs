//! A selective reader of the protobuf wire format for OTLP trace requests: walks the request's
//! bytes and hands out borrowed views of what flagguard reads (resource attributes; a span's
//! ids, kind, flags, times, name, status code, attributes and events), skipping everything else
//! without allocating. prost's full decode allocates every attribute of every span; this reader
//! allocates nothing (see README, Performance).
//!
//! Semantics follow protobuf's merge rules where flagguard reads a field: a singular scalar that
//! occurs twice takes its last value, a message that occurs twice (a span's `status`, a
//! `ResourceSpans.resource`, a `KeyValue.value`) is the merge of its occurrences. The framing of
//! the request down to each span's own fields is checked as prost checks it (varints, lengths,
//! wire types of the fields read, groups); content flagguard never reads (a span's links, an
//! attribute it never looks up, the spans of flagguard's own resources) is skipped, not
//! validated. So every request prost accepts converts to the same batch (property tests in
//! `tests.rs`; the `otlp_proto` fuzz target compares the two), and a few malformed ones prost
//! refuses are accepted. Not modelled: a `kvlistValue` occurring twice in one value (prost
//! joins the lists; this reads the last) — a trace attribute is never read into a list.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

/// Why the bytes are not a protobuf message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("failed to decode protobuf: {0}")]
pub struct WireError(pub &'static str);

/// Groups nest at most this deep (prost's recursion limit).
const RECURSION_LIMIT: u32 = 100;

/// One field's payload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    /// A (deprecated) group: skipped.
    Group,
}

/// The fields of one message, in wire order.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, WireError> {
        // Most varints here (keys, lengths of attributes) are one byte.
        if let Some((&byte, rest)) = self.buf.split_first()
            && byte < 0x80
        {
            self.buf = rest;
            return Ok(u64::from(byte));
        }
        self.varint_slow()
    }

    #[cold]
    fn varint_slow(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&byte, rest)) = self.buf.split_first() else {
                return Err(WireError("buffer underflow"));
            };
            self.buf = rest;
            if i == 9 && byte > 1 {
                return Err(WireError("invalid varint"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError("invalid varint"))
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError("buffer underflow"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Reads a field key: (field number, wire type).
    #[inline]
    fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(WireError("invalid key value"));
        }
        let wire_type = (key & 7) as u8;
        if wire_type > 5 {
            return Err(WireError("invalid wire type value"));
        }
        let tag = key as u32 >> 3;
        if tag == 0 {
            return Err(WireError("invalid tag value: 0"));
        }
        Ok((tag, wire_type))
    }

    #[inline]
    fn value(&mut self, tag: u32, wire_type: u8, depth: u32) -> Result<Value<'a>, WireError> {
        Ok(match wire_type {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| WireError("buffer underflow"))?;
                Value::Bytes(self.take(len)?)
            }
            3 => self.group(tag, depth)?,
            4 => return Err(WireError("unexpected end group tag")),
            _ => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
        })
    }

    #[cold]
    fn group(&mut self, tag: u32, depth: u32) -> Result<Value<'a>, WireError> {
        Ok({
            {
                if depth >= RECURSION_LIMIT {
                    return Err(WireError("recursion limit reached"));
                }
                loop {
                    let (inner, inner_type) = self.key()?;
                    if inner_type == 4 {
                        if inner != tag {
                            return Err(WireError("unexpected end group tag"));
                        }
                        break Value::Group;
                    }
                    self.value(inner, inner_type, depth + 1)?;
                }
            }
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), WireError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let field = self.key().and_then(|(tag, wire_type)| Ok((tag, self.value(tag, wire_type, 0)?)));
        if field.is_err() {
            self.buf = &[];
        }
        Some(field)
    }
}

/// The bytes of a length-delimited field; any other wire type for it is an error, as in prost.
fn bytes(value: Value<'_>) -> Result<&[u8], WireError> {
    match value {
        Value::Bytes(b) => Ok(b),
        _ => Err(WireError("invalid wire type for a length-delimited field")),
    }
}

/// An attribute value, borrowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// A `kvlistValue`.
    List(Attrs<'a>),
    /// An array or a string-table index: never a variant.
    Other,
}

impl<'a> Val<'a> {
    pub fn from_prost(value: &'a AnyValue) -> Option<Val<'a>> {
        use any_value::Value as V;
        Some(match value.value.as_ref()? {
            V::StringValue(s) => Val::Str(s),
            V::BoolValue(b) => Val::Bool(*b),
            V::IntValue(i) => Val::Int(*i),
            V::DoubleValue(d) => Val::Double(*d),
            V::BytesValue(b) => Val::Bytes(b),
            V::KvlistValue(list) => Val::List(Attrs::Prost(&list.values)),
            V::ArrayValue(_) | V::StringValueStrindex(_) => Val::Other,
        })
    }

    /// Reads the merge of every `value` field (an `AnyValue`) of a wire `KeyValue`: the oneof's
    /// last field wins, as prost merges it. A string that is not UTF-8 reads as absent (prost
    /// refuses the whole request).
    fn from_wire(key_value: &'a [u8]) -> Option<Val<'a>> {
        let mut val = None;
        for field in Fields::new(key_value) {
            let Ok((2, Value::Bytes(any))) = field else { continue };
            for field in Fields::new(any) {
                let Ok((tag, value)) = field else { break };
                val = match (tag, value) {
                    (1, Value::Bytes(s)) => Some(std::str::from_utf8(s).map(Val::Str).unwrap_or(Val::Other)),
                    (2, Value::Varint(b)) => Some(Val::Bool(b != 0)),
                    (3, Value::Varint(i)) => Some(Val::Int(i as i64)),
                    (4, Value::Fixed64(d)) => Some(Val::Double(f64::from_bits(d))),
                    (5 | 8, _) => Some(Val::Other),
                    (6, Value::Bytes(list)) => Some(Val::List(Attrs::Wire { outer: None, message: list, tag: 1 })),
                    (7, Value::Bytes(b)) => Some(Val::Bytes(b)),
                    _ => continue,
                };
            }
        }
        val
    }
}

/// A list of OTLP `KeyValue`s: a prost slice, or the `tag` fields of a message on the wire
/// (with `outer = Some(t)`: of every field `t` of `message`, merged, as a repeated optional
/// message such as `ResourceSpans.resource` reads).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Attrs<'a> {
    Prost(&'a [KeyValue]),
    Wire { outer: Option<u32>, message: &'a [u8], tag: u32 },
}

impl<'a> Attrs<'a> {
    pub const EMPTY: Attrs<'static> = Attrs::Prost(&[]);

    /// The value of the first attribute named `name` (absent when that attribute has none).
    pub fn get(&self, name: &str) -> Option<Val<'a>> {
        match *self {
            Attrs::Prost(list) => list.iter().find(|kv| kv.key == name).and_then(|kv| Val::from_prost(kv.value.as_ref()?)),
            Attrs::Wire { .. } => {
                let mut found = None;
                self.each_wire(&mut |key, kv| {
                    if key == name.as_bytes() {
                        found = Some(kv);
                        return false;
                    }
                    true
                });
                found.and_then(Val::from_wire)
            }
        }
    }

    /// The values of the first attributes named `names[i]`, in one pass over the list.
    pub fn lookup<const N: usize>(&self, names: [&str; N]) -> [Option<Val<'a>>; N] {
        let mut found: [Option<Option<Val<'a>>>; N] = [None; N];
        let mut missing = N;
        let mut see = |key: &[u8], value: &dyn Fn() -> Option<Val<'a>>| {
            for (i, name) in names.iter().enumerate() {
                if found[i].is_none() && key == name.as_bytes() {
                    found[i] = Some(value());
                    missing -= 1;
                }
            }
            missing > 0
        };
        match *self {
            Attrs::Prost(list) => {
                for kv in list {
                    if !see(kv.key.as_bytes(), &|| kv.value.as_ref().and_then(Val::from_prost)) {
                        break;
                    }
                }
            }
            Attrs::Wire { .. } => self.each_wire(&mut |key, kv| see(key, &|| Val::from_wire(kv))),
        }
        found.map(Option::flatten)
    }

    /// Calls `f(key, value)` for each attribute in order (wire keys that are not UTF-8 are skipped).
    pub fn for_each(&self, mut f: impl FnMut(&'a str, Option<Val<'a>>)) {
        match *self {
            Attrs::Prost(list) => list.iter().for_each(|kv| f(&kv.key, kv.value.as_ref().and_then(Val::from_prost))),
            Attrs::Wire { .. } => self.each_wire(&mut |key, kv| {
                if let Ok(key) = std::str::from_utf8(key) {
                    f(key, Val::from_wire(kv));
                }
                true
            }),
        }
    }

    /// Walks the wire `KeyValue`s, calling `f(key, key_value_bytes)` until it returns false.
    /// Malformed content ends the walk (prost would have refused the request).
    fn each_wire(&self, f: &mut dyn FnMut(&'a [u8], &'a [u8]) -> bool) {
        let Attrs::Wire { outer, message, tag } = *self else { return };
        let mut walk = |message: &'a [u8]| -> bool {
            for field in Fields::new(message) {
                let Ok((t, value)) = field else { return false };
                if t != tag {
                    continue;
                }
                let Value::Bytes(kv) = value else { return false };
                // The key's last occurrence wins.
                let mut key: &[u8] = &[];
                for field in Fields::new(kv) {
                    match field {
                        Ok((1, Value::Bytes(k))) => key = k,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                if !f(key, kv) {
                    return false;
                }
            }
            true
        };
        match outer {
            None => {
                walk(message);
            }
            Some(outer) => {
                for field in Fields::new(message) {
                    match field {
                        Ok((t, Value::Bytes(inner))) if t == outer => {
                            if !walk(inner) {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
        }
    }
}

/// A span event, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct EventView<'a> {
    pub name: &'a [u8],
    pub attributes: Attrs<'a>,
}

/// A span's events: prost's, or the `events` fields of a wire span.
#[derive(Clone, Copy, Debug)]
pub enum Events<'a> {
    Prost(&'a [opentelemetry_proto::tonic::trace::v1::span::Event]),
    Wire(&'a [u8]),
}

impl<'a> Events<'a> {
    pub fn for_each(&self, mut f: impl FnMut(EventView<'a>)) {
        match *self {
            Events::Prost(events) => events.iter().for_each(|e| f(EventView { name: e.name.as_bytes(), attributes: Attrs::Prost(&e.attributes) })),
            Events::Wire(span) => {
                for field in Fields::new(span) {
                    let Ok((t, value)) = field else { return };
                    let (SPAN_EVENTS, Value::Bytes(event)) = (t, value) else { continue };
                    f(EventView { name: event_name(event), attributes: Attrs::Wire { outer: None, message: event, tag: 3 } });
                }
            }
        }
    }
}

const SPAN_EVENTS: u32 = 11;

/// An event's name (its last `name` field; malformed content ends the read).
fn event_name(event: &[u8]) -> &[u8] {
    let mut name: &[u8] = &[];
    for field in Fields::new(event) {
        match field {
            Ok((2, Value::Bytes(n))) => name = n,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    name
}

/// What flagguard reads of a span, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct SpanView<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub flags: u32,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub name: &'a [u8],
    /// `status.code` (0, UNSET, when there is no status).
    pub status_code: i32,
    pub attributes: Attrs<'a>,
    pub events: Events<'a>,
    /// Whether any event is named like a flag evaluation (only then are events walked).
    pub flag_events: bool,
}

/// Event names that carry a flag evaluation.
fn is_flag_event(name: &[u8]) -> bool {
    name == crate::ingest::semconv::EVENT_NEW.as_bytes() || name == crate::ingest::semconv::EVENT_OLD.as_bytes()
}

impl<'a> SpanView<'a> {
    pub fn from_prost(span: &'a opentelemetry_proto::tonic::trace::v1::Span) -> Self {
        SpanView {
            trace_id: &span.trace_id,
            span_id: &span.span_id,
            parent_span_id: &span.parent_span_id,
            flags: span.flags,
            kind: span.kind,
            start_time_unix_nano: span.start_time_unix_nano,
            end_time_unix_nano: span.end_time_unix_nano,
            name: span.name.as_bytes(),
            status_code: span.status.as_ref().map_or(0, |s| s.code),
            attributes: Attrs::Prost(&span.attributes),
            events: Events::Prost(&span.events),
            flag_events: span.events.iter().any(|e| is_flag_event(e.name.as_bytes())),
        }
    }

    /// Reads a span's own fields (checking their framing and wire types).
    pub fn from_wire(span: &'a [u8]) -> Result<Self, WireError> {
        let mut view = SpanView {
            trace_id: &[],
            span_id: &[],
            parent_span_id: &[],
            flags: 0,
            kind: 0,
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            name: &[],
            status_code: 0,
            attributes: Attrs::Wire { outer: None, message: span, tag: 9 },
            events: Events::Wire(span),
            flag_events: false,
        };
        for field in Fields::new(span) {
            let (tag, value) = field?;
            match (tag, value) {
                (1, v) => view.trace_id = bytes(v)?,
                (2, v) => view.span_id = bytes(v)?,
                (4, v) => view.parent_span_id = bytes(v)?,
                (5, v) => view.name = bytes(v)?,
                (6, Value::Varint(k)) => view.kind = k as i32,
                (7, Value::Fixed64(t)) => view.start_time_unix_nano = t,
                (8, Value::Fixed64(t)) => view.end_time_unix_nano = t,
                (9 | 11 | 15, v) => {
                    let message = bytes(v)?;
                    if tag == SPAN_EVENTS && !view.flag_events {
                        view.flag_events = is_flag_event(event_name(message));
                    }
                    if tag == 15 {
                        for field in Fields::new(message) {
                            match field? {
                                (3, Value::Varint(code)) => view.status_code = code as i32,
                                (3, _) => return Err(WireError("invalid wire type for status.code")),
                                _ => {}
                            }
                        }
                    }
                }
                (16, Value::Fixed32(f)) => view.flags = f,
                (6 | 7 | 8 | 16, _) => return Err(WireError("invalid wire type for a span field")),
                _ => {}
            }
        }
        Ok(view)
    }
}

/// What [`walk_traces`] reports.
pub trait TraceVisitor<'a> {
    /// A `ResourceSpans` starts (its `resource` attributes, merged); false skips its spans.
    fn resource(&mut self, ri: usize, attributes: Attrs<'a>) -> bool;
    /// Span `si` (counted within its `ScopeSpans`) of resource `ri`.
    fn span(&mut self, ri: usize, si: usize, span: SpanView<'a>);
}

/// Walks an `ExportTraceServiceRequest`: each `ResourceSpans`, then each span of each of its
/// `ScopeSpans`, in order.
pub fn walk_traces<'a>(request: &'a [u8], visitor: &mut impl TraceVisitor<'a>) -> Result<(), WireError> {
    let mut ri = 0;
    for field in Fields::new(request) {
        let (tag, value) = field?;
        if tag != 1 {
            continue;
        }
        let resource_spans = bytes(value)?;
        // Framing first, so that a malformed `ResourceSpans` is refused before any of its spans.
        for field in Fields::new(resource_spans) {
            let (tag, value) = field?;
            if tag == 1 || tag == 2 {
                bytes(value)?;
            }
        }
        if visitor.resource(ri, Attrs::Wire { outer: Some(1), message: resource_spans, tag: 1 }) {
            for field in Fields::new(resource_spans) {
                let (2, value) = field? else { continue };
                let mut si = 0;
                for field in Fields::new(bytes(value)?) {
                    let (2, value) = field? else { continue };
                    visitor.span(ri, si, SpanView::from_wire(bytes(value)?)?);
                    si += 1;
                }
            }
        }
        ri += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
