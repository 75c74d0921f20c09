//! What a key's name and value may be (the admin API and the key management
//! REST API check the same).

/// Key names: 1 to 64 of A-Z a-z 0-9 . - _, not starting with `_` (reserved, as
/// `_master`).
pub fn check_key_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key name `{name}` must be 1 to 64 of A-Z a-z 0-9 . - _, not starting with `_`"
        ))
    }
}

/// Key values: 16 to 128 of A-Z a-z 0-9 - _ = (what fits a `code` query parameter
/// and an `x-functions-key` header unescaped).
pub fn check_key_value(value: &str) -> Result<(), String> {
    let ok = (16..=128).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '='));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key value must be 16 to 128 of A-Z a-z 0-9 - _ = (got {} characters)",
            value.len()
        ))
    }
}

/// A new random key value: 42 random bytes, URL-safe base64 (56 characters).
pub fn new_key_value() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 42];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_are_checked() {
        assert!(check_key_name("ci-deploy_1.x").is_ok());
        for bad in ["", "_master", "a b", "ä", &"x".repeat(65)] {
            assert!(check_key_name(bad).is_err(), "{bad}");
        }
        assert!(check_key_value(&"a".repeat(16)).is_ok());
        for bad in ["short", "has space 0123456789", &"x".repeat(129)] {
            assert!(check_key_value(bad).is_err(), "{bad}");
        }
        let v = new_key_value();
        assert!(check_key_value(&v).is_ok(), "{v}");
        assert_ne!(v, new_key_value());
    }
}
