//! Function keys at request time, as Azure checks them: the key comes from the
//! `x-functions-key` header, else the `code` query parameter; `_master` grants
//! admin level, host keys every function, function keys their function.

use strom_proto::manifest::AuthLevel;
use strom_proto::worker_view::AppKeys;

/// The level a presented key grants for one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Granted {
    None,
    Function,
    Host,
    Master,
}

pub fn granted(keys: &AppKeys, function: &str, presented: Option<&str>) -> Granted {
    let Some(k) = presented.filter(|k| !k.is_empty()) else {
        return Granted::None;
    };
    if eq(&keys.master, k) {
        return Granted::Master;
    }
    if keys.host.values().any(|v| eq(v, k)) {
        return Granted::Host;
    }
    if keys
        .functions
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(function))
        .is_some_and(|(_, fk)| fk.values().any(|v| eq(v, k)))
    {
        return Granted::Function;
    }
    Granted::None
}

/// Whether `granted` satisfies the function's `authLevel`.
pub fn allows(level: AuthLevel, granted: Granted) -> bool {
    match level {
        AuthLevel::Anonymous => true,
        AuthLevel::Function => granted >= Granted::Function,
        AuthLevel::Admin => granted == Granted::Master,
    }
}

/// Constant-time comparison of key values.
fn eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The presented key: `x-functions-key` header first, then `?code=`.
pub fn presented<'a>(header: Option<&'a str>, query: &'a [(String, String)]) -> Option<&'a str> {
    header.or_else(|| {
        query
            .iter()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn keys() -> AppKeys {
        AppKeys {
            master: "m".into(),
            host: BTreeMap::from([("default".into(), "h".into())]),
            functions: BTreeMap::from([
                (
                    "Orders".into(),
                    BTreeMap::from([("default".into(), "f".into())]),
                ),
                (
                    "other".into(),
                    BTreeMap::from([("default".into(), "g".into())]),
                ),
            ]),
        }
    }

    #[test]
    fn key_levels_follow_azure() {
        let k = keys();
        assert_eq!(granted(&k, "orders", Some("m")), Granted::Master);
        assert_eq!(granted(&k, "orders", Some("h")), Granted::Host);
        assert_eq!(granted(&k, "orders", Some("f")), Granted::Function);
        assert_eq!(
            granted(&k, "orders", Some("g")),
            Granted::None,
            "another function's key"
        );
        assert_eq!(granted(&k, "orders", Some("")), Granted::None);
        assert_eq!(granted(&k, "orders", None), Granted::None);

        assert!(allows(AuthLevel::Anonymous, Granted::None));
        assert!(!allows(AuthLevel::Function, Granted::None));
        assert!(allows(AuthLevel::Function, Granted::Function));
        assert!(allows(AuthLevel::Function, Granted::Master));
        assert!(!allows(AuthLevel::Admin, Granted::Host));
        assert!(allows(AuthLevel::Admin, Granted::Master));
    }

    #[test]
    fn header_wins_over_code_query() {
        let q = vec![("code".to_string(), "q".to_string())];
        assert_eq!(presented(Some("h"), &q), Some("h"));
        assert_eq!(presented(None, &q), Some("q"));
        assert_eq!(presented(None, &[]), None);
    }
}
