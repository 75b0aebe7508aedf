//! Disk sizes written as Kubernetes quantities.

use super::error::{Result, StorageError};

/// Parses a disk size: a whole number of bytes (`1024`), with a binary suffix (`Ki`, `Mi`, `Gi`,
/// `Ti`, `Pi`, `Ei`: powers of 1024) or a decimal one (`k`, `M`, `G`, `T`, `P`, `E`: powers of
/// 1000). Fractions and exponents (`1.5Gi`, `1e9`) are refused: a disk size is whole bytes.
pub fn parse_quantity(text: &str) -> Result<u64> {
    let invalid = |why: &str| {
        StorageError::InvalidRequest(format!(
            "size '{text}' {why} (expected a whole number of bytes, optionally with Ki, Mi, Gi, Ti, \
             Pi or Ei, e.g. 10Gi)"
        ))
    };
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(digits_end);
    if number.is_empty() {
        return Err(invalid("does not start with a number"));
    }
    let multiplier: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        s if s.starts_with('.') => return Err(invalid("is not a whole number")),
        _ => return Err(invalid("has an unknown unit")),
    };
    let value: u64 = number.parse().map_err(|_| invalid("is too large"))?;
    value
        .checked_mul(multiplier)
        .ok_or_else(|| invalid("is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_quantity("1024").unwrap(), 1024);
        assert_eq!(parse_quantity("10Gi").unwrap(), 10 << 30);
        assert_eq!(parse_quantity("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_quantity("4Ki").unwrap(), 4096);
        assert_eq!(parse_quantity("2Ti").unwrap(), 2 << 40);
        assert_eq!(parse_quantity("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_quantity(" 3M ").unwrap(), 3_000_000);
        assert_eq!(parse_quantity("0").unwrap(), 0);
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "Gi",
            "1.5Gi",
            "10GB",
            "-1",
            "1e9",
            "16Ei",
            "99999999999999999999",
        ] {
            let err = parse_quantity(bad).unwrap_err();
            assert_eq!(err.reason(), "InvalidSpec", "{bad}");
            assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
        }
    }
}
