//! `rank_pattern` / `alpha_pattern`: regex keys → values, matched like PEFT 0.21's
//! `get_pattern_key` (see [`crate::config`] for the rule and the TOML forms).

use crate::config::{bad, LoraConfigError};
use regex::Regex;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::marker::PhantomData;

/// Pattern keys with their values, and whether their order is known.
///
/// * Ordered (PEFT's JSON object, the TOML array of `[key, value]` pairs, [`Patterns::ordered`]):
///   the first key that matches wins, as in PEFT.
/// * Unordered (a TOML table, [`Patterns::unordered`]): the order of the file is lost, so two
///   matching keys with different values are an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Patterns<V> {
    entries: Vec<(String, V)>,
    ordered: bool,
}

impl<V> Default for Patterns<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            ordered: false,
        }
    }
}

/// PEFT's test for key `k`: `re.match(rf"(.*\.)?({k})$", path)`.
fn key_regex(key: &str, field: &str) -> Result<Regex, LoraConfigError> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
        .map_err(|e| bad(format!("{field}.\"{key}\""), format!("bad regex: {e}")))
}

impl<V: Copy + PartialEq + fmt::Debug> Patterns<V> {
    /// Entries whose order is meaningful: the first matching key wins (PEFT's rule).
    pub fn ordered(entries: Vec<(String, V)>) -> Self {
        Self {
            entries,
            ordered: true,
        }
    }

    /// Entries whose order is not meaningful: overlapping keys with different values are an
    /// error at lookup.
    pub fn unordered(entries: impl IntoIterator<Item = (String, V)>) -> Self {
        Self {
            entries: entries.into_iter().collect(),
            ordered: false,
        }
    }

    /// Whether first-match order applies.
    pub fn is_ordered(&self) -> bool {
        self.ordered
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in their stored order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value stored under exactly `key` (no matching).
    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Checks that every key is a valid regex.
    pub(crate) fn compile(&self, field: &str) -> Result<(), LoraConfigError> {
        for (k, _) in &self.entries {
            key_regex(k, field)?;
        }
        Ok(())
    }

    /// The value for the module at `path`: PEFT's first matching key when ordered; when
    /// unordered, the value of the matching keys, an error if they disagree. `field` names the
    /// setting in errors.
    pub fn lookup(&self, path: &str, field: &str) -> Result<Option<V>, LoraConfigError> {
        let mut found: Option<(&str, V)> = None;
        for (k, v) in &self.entries {
            if !key_regex(k, field)?.is_match(path) {
                continue;
            }
            match found {
                None if self.ordered => return Ok(Some(*v)),
                None => found = Some((k, *v)),
                Some((k0, v0)) if v0 != *v => {
                    return Err(bad(
                        field,
                        format!(
                            "keys \"{k0}\" ({v0:?}) and \"{k}\" ({v:?}) both match `{path}`; a \
                             TOML table does not keep its order, so write the patterns as an \
                             ordered array of [key, value] pairs (the first match wins, as in \
                             PEFT) or make the keys disjoint"
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(found.map(|(_, v)| v))
    }
}

impl<V: Serialize> Serialize for Patterns<V> {
    /// Ordered: an array of `[key, value]` pairs; unordered: a map.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.ordered {
            let mut seq = s.serialize_seq(Some(self.entries.len()))?;
            for e in &self.entries {
                seq.serialize_element(e)?;
            }
            seq.end()
        } else {
            let mut map = s.serialize_map(Some(self.entries.len()))?;
            for (k, v) in &self.entries {
                map.serialize_entry(k, v)?;
            }
            map.end()
        }
    }
}

/// Serialises ordered or not as a map in stored order: PEFT's JSON object.
pub struct AsMap<'a, V>(pub &'a Patterns<V>);

impl<V: Serialize> Serialize for AsMap<'_, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.entries.len()))?;
        for (k, v) in &self.0.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

struct PatternsVisitor<V> {
    map_is_ordered: bool,
    _v: PhantomData<V>,
}

impl<'de, V: Deserialize<'de>> Visitor<'de> for PatternsVisitor<V> {
    type Value = Patterns<V>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table of pattern = value, or an array of [pattern, value] pairs")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = m.next_entry::<String, V>()? {
            entries.push((k, v));
        }
        Ok(Patterns {
            entries,
            ordered: self.map_is_ordered,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(pair) = s.next_element::<(String, V)>()? {
            entries.push(pair);
        }
        Ok(Patterns {
            entries,
            ordered: true,
        })
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Patterns {
            entries: Vec::new(),
            ordered: self.map_is_ordered,
        })
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Patterns<V> {
    /// A map gives unordered patterns (TOML tables reach serde sorted); an array of pairs gives
    /// ordered ones.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PatternsVisitor {
            map_is_ordered: false,
            _v: PhantomData,
        })
    }
}

/// Deserialises a map **in the order the deserializer yields it** as ordered patterns: for
/// PEFT's JSON read straight from text (`serde_json::from_str`), that is the file's order.
pub fn deserialize_ordered_map<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
    d: D,
) -> Result<Patterns<V>, D::Error> {
    d.deserialize_any(PatternsVisitor {
        map_is_ordered: true,
        _v: PhantomData,
    })
}
