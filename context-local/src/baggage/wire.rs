//! What a `baggage` header looks like on the wire (W3C Baggage, *Definition*):
//! list members parsed and validated one by one, values percent-decoded and
//! percent-encoded.

use std::sync::Arc;

use crate::baggage_codec::is_tchar;

/// One valid list member as it was received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    /// The member's text, surrounding whitespace trimmed: what is forwarded.
    raw: Box<str>,
    /// `raw[..key_end]` is the key.
    key_end: usize,
    /// `raw[props_start..]` is `;` and the properties, or empty.
    props_start: usize,
    /// The value, percent-decoded (invalid UTF-8 as U+FFFD).
    value: Box<str>,
}

impl Member {
    /// Parses one list member; `None` if it is not valid.
    ///
    /// `list-member = key OWS "=" OWS value *( OWS ";" OWS property )`,
    /// `property = key OWS "=" OWS value / key OWS`.
    pub(crate) fn parse(text: &str) -> Option<Member> {
        let raw = trim_ows(text);
        let bytes = raw.as_bytes();
        let key_end = skip(bytes, 0, is_tchar);
        if key_end == 0 {
            return None;
        }
        let mut at = skip(bytes, key_end, is_ows);
        if bytes.get(at) != Some(&b'=') {
            return None;
        }
        at = skip(bytes, at + 1, is_ows);
        let value_start = at;
        let value_end = skip(bytes, value_start, is_baggage_octet);
        at = skip(bytes, value_end, is_ows);
        let props_start = if at == bytes.len() { bytes.len() } else { at };
        while at < bytes.len() {
            if bytes[at] != b';' {
                return None;
            }
            at = skip(bytes, at + 1, is_ows);
            let property_key_end = skip(bytes, at, is_tchar);
            if property_key_end == at {
                return None;
            }
            at = skip(bytes, property_key_end, is_ows);
            if bytes.get(at) == Some(&b'=') {
                at = skip(bytes, at + 1, is_ows);
                at = skip(bytes, at, is_baggage_octet);
                at = skip(bytes, at, is_ows);
            }
        }
        let value = decode(&raw[value_start..value_end]).into_boxed_str();
        Some(Member { raw: raw.into(), key_end, props_start, value })
    }

    /// A member for `key` (a token) and `value`, with `properties` (already
    /// valid property syntax, without the leading `;`) if not empty.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn build(key: &str, value: &str, properties: &str) -> Option<Member> {
        let mut text = String::with_capacity(key.len() + value.len() + properties.len() + 2);
        text.push_str(key);
        text.push('=');
        encode_into(&mut text, value);
        if !properties.is_empty() {
            text.push(';');
            text.push_str(properties);
        }
        Member::parse(&text)
    }

    /// The member's text as received, surrounding whitespace trimmed.
    pub(crate) fn raw(&self) -> &str {
        &self.raw
    }

    pub(crate) fn key(&self) -> &str {
        &self.raw[..self.key_end]
    }

    /// The decoded value.
    pub(crate) fn value(&self) -> &str {
        &self.value
    }

    /// The properties as received, without the first `;`, trimmed.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn properties(&self) -> &str {
        self.raw[self.props_start..].strip_prefix(';').map_or("", trim_ows)
    }
}

/// The valid members of several `baggage` header values, as one list in the
/// order received (W3C Baggage, *Header Name*: multiple headers are one list).
#[derive(Clone, Debug, Default)]
pub(crate) struct Received(Arc<[Member]>);

impl Received {
    pub(crate) fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Received {
        Received::from_members(
            values.into_iter().flat_map(|value| value.split(',')).filter_map(Member::parse).collect(),
        )
    }

    pub(crate) fn from_members(members: Vec<Member>) -> Received {
        Received(members.into())
    }

    pub(crate) fn members(&self) -> &[Member] {
        &self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`
pub(crate) const fn is_baggage_octet(byte: u8) -> bool {
    matches!(byte, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// `OWS = *( SP / HTAB )`
const fn is_ows(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

fn skip(bytes: &[u8], mut at: usize, class: fn(u8) -> bool) -> usize {
    while at < bytes.len() && class(bytes[at]) {
        at += 1;
    }
    at
}

/// Appends `value` percent-encoded: every byte outside `baggage-octet`, and
/// `%` always (W3C Baggage, *value*).
pub(crate) fn encode_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in value.as_bytes() {
        if is_baggage_octet(byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
}

/// Percent-decodes `value`; octets that are not UTF-8 become U+FFFD, and a
/// `%` not followed by two hex digits stays as it is.
pub(crate) fn decode(value: &str) -> String {
    if !value.contains('%') {
        return value.to_owned();
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escaped = match (bytes[at], bytes.get(at + 1), bytes.get(at + 2)) {
            (b'%', Some(&high), Some(&low)) => hex(high).zip(hex(low)).map(|(high, low)| high << 4 | low),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                at += 3;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).and_then(|d| u8::try_from(d).ok())
}
