//! The memory size of a domain, read the way libvirt reads it.
//!
//! libvirt takes `<memory>` (value in `unit`, default KiB, rounded up to whole KiB), unless
//! NUMA cells (`<cpu><numa><cell memory=...>`) are defined: then their sum is the memory.
//! Units follow libvirt's `virScaleInteger`, case-insensitively: `b`/`byte`/`bytes`;
//! `k`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`, `P`/`PiB`, `E`/`EiB` (powers of 1024);
//! `KB`, `MB`, `GB`, `TB`, `PB`, `EB` (powers of 1000).

use super::DomainXmlError;
use super::tree::{Element, trim_xml};

/// Largest memory size libvirt accepts, in bytes (`LLONG_MAX`).
const MAX_BYTES: u128 = i64::MAX as u128;

/// The factor a libvirt unit stands for, or `None` for an unknown unit.
pub(crate) fn unit_scale(unit: &str) -> Option<u64> {
    if unit.is_empty() {
        return Some(1024);
    }
    let lower = unit.to_ascii_lowercase();
    if matches!(lower.as_str(), "b" | "byte" | "bytes") {
        return Some(1);
    }
    let mut chars = lower.chars();
    let power = match chars.next()? {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    let base: u64 = match chars.as_str() {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return None,
    };
    base.checked_pow(power)
}

/// A size in `unit` (default KiB) converted to KiB, rounded up as libvirt does.
fn to_kib(line: usize, what: &'static str, value: &str, unit: Option<&str>) -> Result<u64, DomainXmlError> {
    let invalid = |value: &str, reason: &'static str| DomainXmlError::InvalidMemory {
        line,
        what,
        value: value.to_owned(),
        reason,
    };
    let digits = trim_xml(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(value, "expected a whole number"));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| invalid(value, "the number is too large"))?;
    let unit = unit.map(trim_xml).unwrap_or("");
    let scale = unit_scale(unit).ok_or_else(|| DomainXmlError::InvalidMemory {
        line,
        what: "unit",
        value: unit.to_owned(),
        reason: "unknown unit; use b, KiB, MiB, GiB, TiB (or KB, MB, GB, TB for powers of 1000)",
    })?;
    let bytes = u128::from(number) * u128::from(scale);
    if bytes > MAX_BYTES {
        return Err(invalid(value, "larger than libvirt accepts"));
    }
    u64::try_from(bytes.div_ceil(1024)).map_err(|_| invalid(value, "larger than libvirt accepts"))
}

/// The domain's memory in KiB.
pub(crate) fn memory_kib(domain: &Element<'_>) -> Result<u64, DomainXmlError> {
    let cells: Vec<&Element<'_>> = domain
        .elements()
        .filter(|e| e.is_plain("cpu"))
        .flat_map(|cpu| cpu.elements().filter(|e| e.is_plain("numa")))
        .flat_map(|numa| numa.elements().filter(|e| e.is_plain("cell")))
        .collect();
    let mut numa_total: Option<u64> = None;
    for cell in cells {
        let Some(value) = cell.attr_exact("memory") else {
            continue;
        };
        let unit = cell.attr_exact("unit");
        let kib = to_kib(cell.line, "NUMA cell memory", &value, unit.as_deref())?;
        let total = numa_total
            .unwrap_or(0)
            .checked_add(kib)
            .ok_or(DomainXmlError::InvalidMemory {
                line: cell.line,
                what: "NUMA cell memory",
                value,
                reason: "the NUMA cells add up to more than libvirt accepts",
            })?;
        numa_total = Some(total);
    }
    let (kib, line) = match numa_total {
        Some(total) => (total, domain.line),
        None => {
            let memory = domain
                .elements()
                .find(|e| e.is_plain("memory"))
                .ok_or(DomainXmlError::MissingMemory)?;
            let unit = memory.attr_exact("unit");
            let kib = to_kib(memory.line, "<memory>", &memory.text(), unit.as_deref())?;
            (kib, memory.line)
        }
    };
    if kib == 0 {
        return Err(DomainXmlError::InvalidMemory {
            line,
            what: "<memory>",
            value: "0".to_owned(),
            reason: "a VM needs more than 0 bytes of memory",
        });
    }
    Ok(kib)
}
