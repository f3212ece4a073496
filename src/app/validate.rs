//! Validation of user fields and other request values, with the reason codes of API.md and the
//! proto field names for BadRequest. Pure functions.

use std::collections::BTreeMap;

use crate::error::{Error, Reason, Result};

/// Longest external id, characters.
pub const MAX_EXTERNAL_ID: usize = 64;
pub const MAX_DISPLAY_NAME: usize = 100;
pub const MAX_ADDRESS: usize = 500;
pub const MAX_COMMENT: usize = 500;
pub const MAX_METADATA_ENTRIES: usize = 16;
pub const MAX_METADATA_KEY: usize = 64;
pub const MAX_METADATA_VALUE: usize = 512;

/// `field` is the proto path the caller sent it in, e.g. "user.external_id".
pub fn external_id(value: &str, field: &'static str) -> Result<()> {
    let ok = !value.is_empty()
        && value.chars().count() <= MAX_EXTERNAL_ID
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        return Ok(());
    }
    Err(Error::invalid(
        Reason::ExternalIdInvalid,
        field,
        format!("external_id must be 1-{MAX_EXTERNAL_ID} characters of A-Z a-z 0-9 . _ -"),
    )
    .with_meta("length", value.chars().count()))
}

/// An e-mail address: local part of RFC 5322 atoms separated by dots, a domain of at least two
/// LDH labels with an alphabetic top-level label; empty means "none".
pub fn email(value: &str, field: &'static str) -> Result<()> {
    if value.is_empty() || email_ok(value) {
        return Ok(());
    }
    Err(Error::invalid(Reason::EmailInvalid, field, "email is not a valid e-mail address"))
}

fn email_ok(value: &str) -> bool {
    let Some((local, domain)) = value.rsplit_once('@') else { return false };
    let atom =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c));
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && !s.starts_with('-')
            && !s.ends_with('-')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let labels: Vec<&str> = domain.split('.').collect();
    value.len() <= 254
        && local.len() <= 64
        && local.split('.').all(atom)
        && labels.len() >= 2
        && labels.iter().all(|l| label(l))
        && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()))
}

/// `+` and 8-15 digits (E.164); empty means "none".
pub fn phone(value: &str, field: &'static str) -> Result<()> {
    let ok = value.is_empty()
        || value
            .strip_prefix('+')
            .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        return Ok(());
    }
    Err(Error::invalid(Reason::PhoneInvalid, field, "phone must be + followed by 8 to 15 digits"))
}

/// Combining marks (general category M) outside what `char::is_alphabetic` already covers.
fn is_mark(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036F | 0x0483..=0x0489 | 0x0591..=0x05BD | 0x0610..=0x061A | 0x064B..=0x065F
        | 0x0E31..=0x0E3A | 0x0E47..=0x0E4E | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF
        | 0x302A..=0x302F | 0x3099..=0x309A | 0xFE20..=0xFE2F)
}

/// Up to 100 characters of letters (any script), marks, spaces and `. - '`.
pub fn display_name(value: &str, field: &'static str) -> Result<()> {
    let count = value.chars().count();
    let ok = count <= MAX_DISPLAY_NAME
        && value.chars().all(|c| c.is_alphabetic() || is_mark(c) || matches!(c, ' ' | '.' | '-' | '\''));
    if ok {
        return Ok(());
    }
    Err(Error::invalid(
        Reason::DisplayNameInvalid,
        field,
        format!("display_name must be at most {MAX_DISPLAY_NAME} characters of letters, marks, spaces and . - '"),
    )
    .with_meta("length", count))
}

pub fn address(value: &str, field: &'static str) -> Result<()> {
    let count = value.chars().count();
    if count <= MAX_ADDRESS {
        return Ok(());
    }
    Err(Error::invalid(Reason::AddressTooLong, field, format!("address must be at most {MAX_ADDRESS} characters"))
        .with_meta("length", count)
        .with_meta("max_length", MAX_ADDRESS))
}

pub fn metadata(value: &BTreeMap<String, String>, field: &'static str) -> Result<()> {
    let bad = |message: String| Err(Error::invalid(Reason::MetadataInvalid, field, message));
    if value.len() > MAX_METADATA_ENTRIES {
        return bad(format!("metadata has {} entries; at most {MAX_METADATA_ENTRIES} are allowed", value.len()));
    }
    for (key, v) in value {
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY {
            return bad(format!("metadata keys must be 1-{MAX_METADATA_KEY} characters"));
        }
        if v.chars().count() > MAX_METADATA_VALUE {
            return bad(format!("metadata values must be at most {MAX_METADATA_VALUE} characters"));
        }
    }
    Ok(())
}

/// A page size of 0 (`default`) to `max`; PAGE_SIZE_INVALID otherwise.
pub fn page_size(value: i32, default: usize, max: i32) -> Result<usize> {
    match value {
        0 => Ok(default),
        1.. if value <= max => Ok(value as usize),
        _ => Err(Error::invalid(Reason::PageSizeInvalid, "page_size", format!("page_size must be 0 to {max}"))
            .with_meta("page_size", value)),
    }
}

/// The id a page token names (none for an empty token); PAGE_TOKEN_INVALID when `parse` refuses it.
pub fn page_token<T>(token: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>> {
    if token.is_empty() {
        return Ok(None);
    }
    parse(token).map(Some).ok_or_else(|| {
        Error::invalid(Reason::PageTokenInvalid, "page_token", "page_token is not one this server issued")
    })
}

/// FACE_ID_INVALID unless `fce_` and 16 lowercase hex digits.
pub fn face_id(text: &str, field: &'static str) -> Result<crate::domain::FaceId> {
    crate::domain::FaceId::parse(text)
        .ok_or_else(|| Error::invalid(Reason::FaceIdInvalid, field, "not a face id: fce_ and 16 lowercase hex digits"))
}

pub fn comment(value: &str, field: &'static str) -> Result<()> {
    let count = value.chars().count();
    if count <= MAX_COMMENT {
        return Ok(());
    }
    Err(Error::invalid(Reason::CommentTooLong, field, format!("comment must be at most {MAX_COMMENT} characters"))
        .with_meta("length", count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<()>) -> Option<Reason> {
        r.err().map(|e| e.reason())
    }

    #[test]
    fn external_ids() {
        assert!(external_id("user-42_a.b", "f").is_ok());
        assert_eq!(reason(external_id("", "f")), Some(Reason::ExternalIdInvalid));
        assert_eq!(reason(external_id("has space", "f")), Some(Reason::ExternalIdInvalid));
        assert_eq!(reason(external_id("ünï", "f")), Some(Reason::ExternalIdInvalid));
        assert_eq!(reason(external_id(&"a".repeat(65), "f")), Some(Reason::ExternalIdInvalid));
        assert!(external_id(&"a".repeat(64), "f").is_ok());
    }

    #[test]
    fn emails() {
        for ok in ["", "a@b.co", "first.last+tag@mail.example.org", "o'neil@x-y.io"] {
            assert!(email(ok, "f").is_ok(), "{ok}");
        }
        for bad in ["plain", "a@b", "a@@b.co", ".a@b.co", "a..b@c.co", "a@-b.co", "a@b.c0", "a b@c.co", "a@b..co"] {
            assert_eq!(reason(email(bad, "f")), Some(Reason::EmailInvalid), "{bad}");
        }
    }

    #[test]
    fn phones() {
        for ok in ["", "+12345678", "+123456789012345"] {
            assert!(phone(ok, "f").is_ok(), "{ok}");
        }
        for bad in ["12345678", "+1234567", "+1234567890123456", "+12 345 678", "+12345678a"] {
            assert_eq!(reason(phone(bad, "f")), Some(Reason::PhoneInvalid), "{bad}");
        }
    }

    #[test]
    fn display_names_of_any_script() {
        for ok in ["", "Mary-Jane O'Neil Jr.", "José Ñúñez", "Zoë", "李小龍", "Дмитрий", "अनुराग", "e\u{301}"]
        {
            assert!(display_name(ok, "f").is_ok(), "{ok}");
        }
        for bad in ["R2D2", "a_b", "name@host", "<script>"] {
            assert_eq!(reason(display_name(bad, "f")), Some(Reason::DisplayNameInvalid), "{bad}");
        }
        assert_eq!(reason(display_name(&"a".repeat(101), "f")), Some(Reason::DisplayNameInvalid));
    }

    #[test]
    fn lengths_and_metadata() {
        assert!(address(&"x".repeat(500), "f").is_ok());
        assert_eq!(reason(address(&"x".repeat(501), "f")), Some(Reason::AddressTooLong));
        let mut m: BTreeMap<String, String> = (0..16).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(metadata(&m, "f").is_ok());
        m.insert("k16".into(), "v".into());
        assert_eq!(reason(metadata(&m, "f")), Some(Reason::MetadataInvalid));
        let long_value = BTreeMap::from([("k".to_owned(), "v".repeat(513))]);
        assert_eq!(reason(metadata(&long_value, "f")), Some(Reason::MetadataInvalid));
        let empty_key = BTreeMap::from([(String::new(), "v".to_owned())]);
        assert_eq!(reason(metadata(&empty_key, "f")), Some(Reason::MetadataInvalid));
        assert_eq!(reason(comment(&"c".repeat(501), "f")), Some(Reason::CommentTooLong));
    }
}
