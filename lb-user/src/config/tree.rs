//! A TOML document as a tree that remembers where every key and value was written.
//!
//! `toml::Value` forgets positions, and deserializing straight into the typed config would stop at the first
//! problem. So the document is first read into this tree (every key and value carries its byte span), and
//! `read.rs` then walks it, collecting every problem with its position.
//!
//! Spans come from toml 0.8 through the `serde_spanned` protocol: asked for the struct named
//! `serde_spanned::__unstable::NAME`, a toml deserializer that knows where a key or value came from answers with a
//! map of start, end and value. That module is hidden API, but it is the contract between toml 0.8 and
//! serde_spanned 0.6 (pinned together in Cargo.toml), and the position tests in `tests.rs` fail loudly if it
//! changes. `serde_spanned::Spanned<T>` itself cannot be used: toml answers without a span in two places, which
//! `Spanned` rejects and the visitors below accept: the key of the one-entry map it hands out for a datetime, and a
//! table made implicitly by a dotted key (`vrrp.vrid = 5` at the top level).

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_spanned::__unstable as spanned;

/// The key toml uses for the single entry of the map it hands out for a datetime.
const DATETIME_FIELD: &str = "$__toml_private_datetime";

/// A key or value and the byte range of the text it was read from (empty when toml did not say).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Range<usize>,
}

/// A key of a table and its value.
pub(crate) type Entry = (Spanned<String>, Spanned<Node>);

/// A TOML value. Tables keep their entries in document order so problems are reported top to bottom.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Spanned<Node>>),
    Table(Vec<Entry>),
}

impl Node {
    /// What a user would call this kind of value, for "must be X, got Y" messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Node::String(_) => "a string",
            Node::Integer(_) => "an integer",
            Node::Float(_) => "a float",
            Node::Boolean(_) => "a boolean",
            Node::Datetime(_) => "a datetime",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table",
        }
    }
}

/// Parses a whole document. The root table has no span of its own; its entries do.
pub(crate) fn parse_document(text: &str) -> Result<Vec<Entry>, toml::de::Error> {
    match toml::from_str::<Node>(text)? {
        Node::Table(entries) => Ok(entries),
        // A document is always a table; anything else would be a toml bug, reported as an empty document.
        _ => Ok(Vec::new()),
    }
}

/// What can be read with its span: keys (strings) and values (nodes).
pub(crate) trait Spannable<'de>: Deserialize<'de> {
    /// Builds the value from a map that turned out not to be a span map: toml gives a table without a span
    /// (one made implicitly by a dotted key such as `vrrp.vrid = 5`) as its plain entries. `first` is the first
    /// key, already read.
    fn from_plain_map<A: MapAccess<'de>>(first: Spanned<String>, map: A) -> Result<Self, A::Error>;
}

impl<'de> Spannable<'de> for String {
    fn from_plain_map<A: MapAccess<'de>>(_: Spanned<String>, _: A) -> Result<Self, A::Error> {
        Err(de::Error::invalid_type(de::Unexpected::Map, &"a string"))
    }
}

impl<'de> Spannable<'de> for Node {
    fn from_plain_map<A: MapAccess<'de>>(first: Spanned<String>, map: A) -> Result<Self, A::Error> {
        node_from_map(Some(first), map)
    }
}

/// Reads the `serde_spanned` map (start, end, value) or, from a deserializer that has no span, the bare value.
struct SpannedVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Spannable<'de>> Visitor<'de> for SpannedVisitor<T> {
    type Value = Spanned<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut start = None;
        let mut end = None;
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            match key.value.as_str() {
                k if k == spanned::START_FIELD => start = Some(map.next_value::<usize>()?),
                k if k == spanned::END_FIELD => end = Some(map.next_value::<usize>()?),
                k if k == spanned::VALUE_FIELD => {
                    let value = map.next_value::<T>()?;
                    let start = start.unwrap_or(0);
                    let end = end.unwrap_or(start);
                    return Ok(Spanned { value, span: start..end });
                }
                _ if start.is_none() => return T::from_plain_map(key, map).map(unspanned),
                other => return Err(de::Error::unknown_field(other, &[])),
            }
        }
        // An empty map: a table without a span and without entries.
        T::deserialize(de::value::MapDeserializer::<_, A::Error>::new(std::iter::empty::<((), ())>())).map(unspanned)
    }

    // Without a span, the deserializer calls the plain visitor methods; forward them to T.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        T::deserialize(de::value::StrDeserializer::<E>::new(v)).map(unspanned)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        T::deserialize(de::value::StringDeserializer::<E>::new(v)).map(unspanned)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        T::deserialize(de::value::BoolDeserializer::<E>::new(v)).map(unspanned)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        T::deserialize(de::value::I64Deserializer::<E>::new(v)).map(unspanned)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        T::deserialize(de::value::F64Deserializer::<E>::new(v)).map(unspanned)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        T::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(unspanned)
    }
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned { value, span: 0..0 }
}

impl<'de, T: Spannable<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const FIELDS: &[&str] = &[spanned::START_FIELD, spanned::END_FIELD, spanned::VALUE_FIELD];
        deserializer.deserialize_struct(spanned::NAME, FIELDS, SpannedVisitor(std::marker::PhantomData))
    }
}

/// The entries of a table (or the one entry of toml's datetime map), `first` already read.
fn node_from_map<'de, A: MapAccess<'de>>(mut first: Option<Spanned<String>>, mut map: A) -> Result<Node, A::Error> {
    let mut entries = Vec::new();
    loop {
        let key = match first.take() {
            Some(key) => key,
            None => match map.next_key::<Spanned<String>>()? {
                Some(key) => key,
                None => return Ok(Node::Table(entries)),
            },
        };
        if key.value == DATETIME_FIELD {
            return Ok(Node::Datetime(map.next_value::<String>()?));
        }
        let value = map.next_value::<Spanned<Node>>()?;
        entries.push((key, value));
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Boolean(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        // TOML integers are i64; toml never hands out a larger one.
        i64::try_from(v).map(Node::Integer).map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Node, A::Error> {
        node_from_map(None, map)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Turns byte offsets into 1-based line and column numbers (columns count characters, as editors do).
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        // An offset inside a multi-byte character counts as that character.
        let col = self.text[start..].char_indices().take_while(|(i, _)| start + i < offset).count();
        (line + 1, col + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_counts_from_one_and_in_characters() {
        let idx = LineIndex::new("ab\nçd\n");
        assert_eq!(idx.line_col(0), (1, 1));
        assert_eq!(idx.line_col(1), (1, 2));
        assert_eq!(idx.line_col(3), (2, 1));
        assert_eq!(idx.line_col(5), (2, 2));
        assert_eq!(idx.line_col(7), (3, 1));
    }
}
