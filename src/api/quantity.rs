//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2e3`): one parser for every
//! part that reads them (pod validation and QoS, the scheduler's accounting), with
//! upstream's rounding: finer than nano-units rounds up at parse time, and the
//! integer views (`milli_value`, `value`) round up as `Quantity.MilliValue()` and
//! `Quantity.Value()` do.

/// Parses a quantity into nano-units (rounding finer fractions up), `None` if malformed.
pub fn parse(s: &str) -> Option<i128> {
    let (neg, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (num, suffix) = rest.split_at(num_len);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let (mut exp10, mut bin): (i32, u32) = (0, 0);
    match suffix {
        "" => {}
        "n" => exp10 = -9,
        "u" => exp10 = -6,
        "m" => exp10 = -3,
        "k" => exp10 = 3,
        "M" => exp10 = 6,
        "G" => exp10 = 9,
        "T" => exp10 = 12,
        "P" => exp10 = 15,
        "E" => exp10 = 18,
        "Ki" => bin = 10,
        "Mi" => bin = 20,
        "Gi" => bin = 30,
        "Ti" => bin = 40,
        "Pi" => bin = 50,
        "Ei" => bin = 60,
        e => exp10 = e.strip_prefix(['e', 'E'])?.parse().ok().filter(|x: &i32| x.abs() <= 30)?,
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Some(if neg { i128::MIN } else { i128::MAX });
    }
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    let scaled = mantissa.checked_mul(1i128 << bin)?;
    let shift = exp10 + 9 - frac.len() as i32;
    let v = if shift >= 0 {
        scaled.checked_mul(10i128.checked_pow(shift as u32)?).unwrap_or(i128::MAX)
    } else {
        let d = 10i128.checked_pow((-shift) as u32).unwrap_or(i128::MAX);
        (scaled + d - 1) / d
    };
    Some(if neg { -v } else { v })
}

/// The quantity in thousandths, rounded up (how CPU is counted: millicores).
pub fn milli_value(s: &str) -> Option<i64> {
    parse(s).map(|nanos| saturate(ceil_div(nanos, 1_000_000)))
}

/// The quantity in whole units, rounded up (bytes, pods, devices).
pub fn value(s: &str) -> Option<i64> {
    parse(s).map(|nanos| saturate(ceil_div(nanos, 1_000_000_000)))
}

fn ceil_div(n: i128, d: i128) -> i128 {
    // Division truncates toward zero, which is the ceiling for negative numbers.
    if n > 0 { n / d + i128::from(n % d != 0) } else { n / d }
}

fn saturate(n: i128) -> i64 {
    n.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_to_nano_units() {
        assert_eq!(parse("1"), Some(1_000_000_000));
        assert_eq!(parse("500m"), Some(500_000_000));
        assert_eq!(parse("0.5"), parse("500m"));
        assert_eq!(parse("1Gi"), parse("1024Mi"));
        assert_eq!(parse("1e3"), parse("1k"));
        assert_eq!(parse("1E3"), parse("1k"));
        assert_eq!(parse("1.5Gi"), Some(1_610_612_736_000_000_000));
        assert_eq!(parse("-2"), Some(-2_000_000_000));
        assert_eq!(parse("+2"), Some(2_000_000_000));
        assert_eq!(parse("1n"), Some(1));
        assert_eq!(parse(".5"), parse("500m"));
        for bad in ["", "abc", "1.2.3", "5Q", "m", "1 Gi", "1ki", "1e", "-", ".", "0x10"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn cpu_counts_in_millicores_rounding_up() {
        assert_eq!(milli_value("1"), Some(1000));
        assert_eq!(milli_value("32"), Some(32_000));
        assert_eq!(milli_value("250m"), Some(250));
        assert_eq!(milli_value("0.1"), Some(100));
        assert_eq!(milli_value("1.5"), Some(1500));
        assert_eq!(milli_value("100u"), Some(1), "a tenth of a millicore rounds up to one");
        assert_eq!(milli_value("1e-10"), Some(1), "finer than nano rounds up at parse time");
        assert_eq!(milli_value("0"), Some(0));
        assert_eq!(milli_value("-1500u"), Some(-1));
    }

    #[test]
    fn memory_counts_in_bytes_rounding_up() {
        assert_eq!(value("256Gi"), Some(256 << 30));
        assert_eq!(value("1Ti"), Some(1 << 40));
        assert_eq!(value("128974848"), Some(128_974_848));
        assert_eq!(value("129e6"), Some(129_000_000));
        assert_eq!(value("123Mi"), Some(123 << 20));
        assert_eq!(value("1k"), Some(1000));
        assert_eq!(value("1.5"), Some(2));
        assert_eq!(value("500m"), Some(1));
        assert_eq!(value("110"), Some(110));
    }

    #[test]
    fn huge_quantities_saturate_instead_of_overflowing() {
        assert_eq!(value("9999999999999999999999999999999999Ei"), Some(i64::MAX));
        assert_eq!(value("16Ei"), Some(i64::MAX));
        assert_eq!(milli_value("-99999999999999999999999999999999999"), Some(i64::MIN));
    }
}
