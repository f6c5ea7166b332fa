//! What goes out: one `baggage-string`, each key once, members in the order
//! they are offered, cut at the limits (W3C Baggage, *Limits*) by dropping
//! whole members.

use super::wire::{encode_into, Member};

/// At most this many list members go out.
pub const MAX_MEMBERS: usize = 64;
/// At most this many bytes go out, commas included.
pub const MAX_BYTES: usize = 8192;

/// A `baggage` header value being built.
pub(crate) struct Outgoing<'a> {
    text: String,
    /// Where each written key is in `text`.
    keys: Vec<(usize, usize)>,
    /// Set once a member did not fit: it and every later one are dropped.
    full: bool,
    /// Members that replace, in place, any offered member with the same key
    /// (a request's own `baggage` header), and go out at the end otherwise.
    overrides: Vec<(&'a Member, bool)>,
}

impl<'a> Outgoing<'a> {
    pub(crate) fn new() -> Outgoing<'a> {
        Outgoing { text: String::new(), keys: Vec::new(), full: false, overrides: Vec::new() }
    }

    /// A list where `own` members win over offered ones with the same key.
    pub(crate) fn with_overrides(own: &'a [Member]) -> Outgoing<'a> {
        Outgoing { overrides: own.iter().map(|member| (member, false)).collect(), ..Outgoing::new() }
    }

    /// Offers a member `key=value`, the value percent-encoded here.
    pub(crate) fn offer_value(&mut self, key: &str, value: &str) {
        self.offer(key, |text| {
            text.push_str(key);
            text.push('=');
            encode_into(text, value);
        });
    }

    /// Offers a member as received, byte for byte.
    pub(crate) fn offer_member(&mut self, member: &Member) {
        self.offer(member.key(), |text| text.push_str(member.raw()));
    }

    fn offer(&mut self, key: &str, write: impl FnOnce(&mut String)) {
        if self.full || self.has(key) {
            return;
        }
        if let Some(index) = self.overrides.iter().position(|(own, _)| own.key() == key) {
            self.overrides[index].1 = true;
            let own = self.overrides[index].0;
            return self.write(key, |text| text.push_str(own.raw()));
        }
        self.write(key, write);
    }

    fn has(&self, key: &str) -> bool {
        self.keys.iter().any(|&(start, end)| &self.text[start..end] == key)
    }

    fn write(&mut self, key: &str, write: impl FnOnce(&mut String)) {
        let mark = self.text.len();
        if !self.keys.is_empty() {
            self.text.push(',');
        }
        let start = self.text.len();
        write(&mut self.text);
        if self.keys.len() == MAX_MEMBERS || self.text.len() > MAX_BYTES {
            self.text.truncate(mark);
            self.full = true;
            return;
        }
        self.keys.push((start, start + key.len()));
    }

    /// The header value; `None` if no member went out.
    pub(crate) fn finish(mut self) -> Option<String> {
        let unused: Vec<&Member> = self.overrides.iter().filter(|(_, used)| !used).map(|(own, _)| *own).collect();
        self.overrides.clear();
        for own in unused {
            self.offer_member(own);
        }
        (!self.keys.is_empty()).then_some(self.text)
    }
}
