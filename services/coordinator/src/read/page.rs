//! Keyset pages of the lists: each list is read in an order of immutable columns (its sort
//! key), and a page starts after the last row of the one before it, so that rows added or
//! changed between two pages neither shift a row into the next page twice nor out of it.
//!
//! A page's position travels as a cursor: the list's name and the last row's sort key,
//! base64url-encoded. Clients treat it as opaque; the name keeps a cursor of one list from
//! being read as another's.

use std::ops::Deref;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// At most `limit` rows of a list, after the row whose sort key is `after` (from the first row
/// when `None`).
#[derive(Debug, Clone, Copy)]
pub struct Page<K> {
    pub limit: i64,
    pub after: Option<K>,
}

impl<K> Page<K> {
    /// The first `limit` rows.
    pub const fn first(limit: i64) -> Self {
        Self { limit, after: None }
    }

    /// How many rows to fetch: one more than the page, to know whether another page follows.
    pub(crate) fn fetch(&self) -> i64 {
        self.limit.saturating_add(1)
    }
}

/// The rows of a page, and the sort key of its last row when more rows follow it. Reads as a
/// slice of its rows.
#[derive(Debug)]
pub struct Paged<T, K> {
    pub rows: Vec<T>,
    pub next: Option<K>,
}

impl<T, K> Paged<T, K> {
    /// The page of `rows`, fetched in list order up to [`Page::fetch`]: a row past the limit
    /// says that another page follows, starting after the last row kept.
    pub(crate) fn of(mut rows: Vec<T>, page: &Page<K>, key: impl Fn(&T) -> K) -> Self {
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(key)
        } else {
            None
        };
        Self { rows, next }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Paged<U, K> {
        Paged {
            rows: self.rows.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

impl<T, K> Deref for Paged<T, K> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.rows
    }
}

impl<T, K> IntoIterator for Paged<T, K> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.into_iter()
    }
}

impl<'a, T, K> IntoIterator for &'a Paged<T, K> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.iter()
    }
}

/// Bounds for a list read before its first row: no row was stored in year 1 or will be in
/// 9999, and Postgres stores both (unlike chrono's own extremes).
pub(crate) fn earliest() -> DateTime<Utc> {
    DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

pub(crate) fn latest() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

/// A sort key as a cursor spells it: its parts in order, none containing `:`.
pub trait SortKey: Sized + Copy {
    fn parts(&self) -> Vec<String>;
    fn from_parts(parts: &[&str]) -> Option<Self>;
}

impl SortKey for i64 {
    fn parts(&self) -> Vec<String> {
        vec![self.to_string()]
    }

    fn from_parts(parts: &[&str]) -> Option<Self> {
        match parts {
            [n] => n.parse().ok(),
            _ => None,
        }
    }
}

/// A log position and an id: rows of one event, in id order.
impl SortKey for (i64, Uuid) {
    fn parts(&self) -> Vec<String> {
        vec![self.0.to_string(), self.1.to_string()]
    }

    fn from_parts(parts: &[&str]) -> Option<Self> {
        match parts {
            [n, id] => Some((n.parse().ok()?, id.parse().ok()?)),
            // A cursor of a list that was keyed by position alone (one row per event): after
            // every row of that event.
            [n] => Some((n.parse().ok()?, Uuid::max())),
            _ => None,
        }
    }
}

/// A log position, a place among the rows of that event, and an id.
impl SortKey for (i64, i16, Uuid) {
    fn parts(&self) -> Vec<String> {
        vec![self.0.to_string(), self.1.to_string(), self.2.to_string()]
    }

    fn from_parts(parts: &[&str]) -> Option<Self> {
        match parts {
            [n, position, id] => Some((n.parse().ok()?, position.parse().ok()?, id.parse().ok()?)),
            // A cursor of a list that was keyed by position alone (one row per event): after
            // every row of that event.
            [n] => Some((n.parse().ok()?, i16::MAX, Uuid::max())),
            _ => None,
        }
    }
}

impl SortKey for i32 {
    fn parts(&self) -> Vec<String> {
        vec![self.to_string()]
    }

    fn from_parts(parts: &[&str]) -> Option<Self> {
        match parts {
            [n] => n.parse().ok(),
            _ => None,
        }
    }
}

impl SortKey for Uuid {
    fn parts(&self) -> Vec<String> {
        vec![self.to_string()]
    }

    fn from_parts(parts: &[&str]) -> Option<Self> {
        match parts {
            [id] => id.parse().ok(),
            _ => None,
        }
    }
}

/// Microseconds since the epoch: what Postgres keeps of a time, so a row's key reads back
/// exactly.
fn time_part(at: DateTime<Utc>) -> String {
    at.timestamp_micros().to_string()
}

/// A stored row's time: one outside the years 1 to 9999 was never in a cursor of this API (and
/// Postgres would refuse it as a query parameter).
fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(raw.parse().ok()?)
        .filter(|at| (earliest()..=latest()).contains(at))
}

/// `(created_at, id)` and its like: a time, then the id that orders rows of the same time.
impl SortKey for (DateTime<Utc>, Uuid) {
    fn parts(&self) -> Vec<String> {
        vec![time_part(self.0), self.1.to_string()]
    }

    fn from_parts(parts: &[&str]) -> Option<Self> {
        match parts {
            [at, id] => Some((parse_time(at)?, id.parse().ok()?)),
            _ => None,
        }
    }
}

/// A flag that sorts first (false before true), then a time and an id.
impl SortKey for (bool, DateTime<Utc>, Uuid) {
    fn parts(&self) -> Vec<String> {
        vec![
            u8::from(self.0).to_string(),
            time_part(self.1),
            self.2.to_string(),
        ]
    }

    fn from_parts(parts: &[&str]) -> Option<Self> {
        let flag = match parts.first() {
            Some(&"0") => false,
            Some(&"1") => true,
            _ => return None,
        };
        let (at, id) = <(DateTime<Utc>, Uuid)>::from_parts(&parts[1..])?;
        Some((flag, at, id))
    }
}

/// The cursor of the page of list `list` that starts after the row whose sort key is `key`.
pub fn encode<K: SortKey>(list: &str, key: &K) -> String {
    let mut text = list.to_owned();
    for part in key.parts() {
        text.push(':');
        text.push_str(&part);
    }
    URL_SAFE_NO_PAD.encode(text)
}

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("is not a cursor this API gave")]
    Malformed,
    #[error("is a cursor of another list ({0})")]
    OtherList(String),
}

/// The sort key a cursor of list `list` carries.
pub fn decode<K: SortKey>(list: &str, cursor: &str) -> Result<K, CursorError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| CursorError::Malformed)?;
    let text = String::from_utf8(bytes).map_err(|_| CursorError::Malformed)?;
    let mut parts = text.split(':');
    let minted_by = parts.next().unwrap_or_default();
    let parts: Vec<&str> = parts.collect();
    if minted_by != list {
        let a_list = !minted_by.is_empty()
            && minted_by
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-');
        return Err(if a_list && !parts.is_empty() {
            CursorError::OtherList(minted_by.to_owned())
        } else {
            CursorError::Malformed
        });
    }
    let key = K::from_parts(&parts);
    key.ok_or(CursorError::Malformed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_the_key_it_was_made_of() {
        let at = DateTime::from_timestamp_micros(1_712_345_678_901_234).unwrap();
        let id = Uuid::now_v7();
        let cursor = encode("agents", &(at, id));
        assert!(
            cursor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{cursor}"
        );
        assert_eq!(
            decode::<(DateTime<Utc>, Uuid)>("agents", &cursor),
            Ok((at, id))
        );
        let template = (true, at, id);
        assert_eq!(
            decode("templates", &encode("templates", &template)),
            Ok(template)
        );
        assert_eq!(decode("alerts", &encode("alerts", &42_i64)), Ok(42_i64));
        assert_eq!(decode("runs", &encode("runs", &7_i32)), Ok(7_i32));
        let handoff = (42_i64, id);
        assert_eq!(
            decode("handoffs", &encode("handoffs", &handoff)),
            Ok(handoff)
        );
        assert_eq!(
            decode("handoffs", &encode("handoffs", &42_i64)),
            Ok((42_i64, Uuid::max())),
            "a cursor of the release before"
        );
        let told = (42_i64, 3_i16, id);
        assert_eq!(
            decode("interactions", &encode("interactions", &told)),
            Ok(told)
        );
        assert_eq!(
            decode("knowledge", &encode("knowledge", &42_i64)),
            Ok((42_i64, i16::MAX, Uuid::max())),
            "a cursor of the release before: after every row of that event"
        );
    }

    #[test]
    fn a_cursor_of_another_list_or_of_nothing_is_refused() {
        let cursor = encode("interactions", &42_i64);
        assert_eq!(
            decode::<i64>("handoffs", &cursor),
            Err(CursorError::OtherList("interactions".to_owned()))
        );
        for bad in [
            "",
            "!!",
            "bm90IGEgY3Vyc29y",
            &encode("alerts", &42_i64)[..3],
        ] {
            assert_eq!(
                decode::<i64>("alerts", bad),
                Err(CursorError::Malformed),
                "{bad}"
            );
        }
        // Times no stored row has, each side of what Postgres stores.
        for micros in [-3_200_000_000_000_000_000_i64, i64::MAX] {
            let cursor = URL_SAFE_NO_PAD.encode(format!("executions:{micros}:{}", Uuid::nil()));
            assert_eq!(
                decode::<(DateTime<Utc>, Uuid)>("executions", &cursor),
                Err(CursorError::Malformed),
                "{micros}"
            );
        }
        // The right list with a key of another shape.
        let cursor = encode("alerts", &(earliest(), Uuid::nil()));
        assert_eq!(
            decode::<i64>("alerts", &cursor),
            Err(CursorError::Malformed)
        );
    }

    #[test]
    fn a_page_keeps_its_limit_and_says_where_the_next_starts() {
        let page = Page::<i64>::first(2);
        assert_eq!(page.fetch(), 3);
        let full = Paged::of(vec![1_i64, 2, 3], &page, |n| *n);
        assert_eq!((full.rows.as_slice(), full.next), (&[1, 2][..], Some(2)));
        let last = Paged::of(vec![1_i64, 2], &page, |n| *n);
        assert_eq!((last.rows.as_slice(), last.next), (&[1, 2][..], None));
        assert!(earliest() < DateTime::UNIX_EPOCH && latest() > Utc::now());
    }
}
