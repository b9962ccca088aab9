//! Kubernetes quantities (`100m`, `1Gi`, `2e3`): parsed into exact nano-units
//! and printed in upstream's canonical form (`1000` → `1k`, `1536Mi` stays,
//! `0.5` → `500m`), so sums such as a quota's usage read as the API prints them.
//! The integer views the scheduler counts in (`milli_value` for millicores,
//! `value` for bytes and counts) round up as upstream's `MilliValue()` and
//! `Value()` do.

use std::cmp::Ordering;
use std::fmt;

/// How a quantity is written, which its canonical form keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Powers of 1000: m, k, M, G…
    DecimalSi,
    /// Powers of 1024: Ki, Mi, Gi…
    BinarySi,
    /// `e3`, `E6`…
    DecimalExponent,
}

#[derive(Clone, Copy, Debug)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

const NANO: i128 = 1_000_000_000;

/// Parses a quantity into nano-units (finer fractions round up), `None` if malformed.
pub fn parse_nanos(s: &str) -> Option<i128> {
    parse(s).map(|(nanos, _)| nanos)
}

/// The quantity in thousandths, rounded up (how CPU is counted: millicores).
pub fn milli_value(s: &str) -> Option<i64> {
    parse_nanos(s).map(|nanos| saturate(ceil_div(nanos, 1_000_000)))
}

/// The quantity in whole units, rounded up (bytes, pods, devices).
pub fn value(s: &str) -> Option<i64> {
    parse_nanos(s).map(|nanos| saturate(ceil_div(nanos, NANO)))
}

fn ceil_div(n: i128, d: i128) -> i128 {
    // Division truncates toward zero, which is the ceiling for negative numbers.
    if n > 0 { n / d + i128::from(n % d != 0) } else { n / d }
}

fn saturate(n: i128) -> i64 {
    n.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn parse(s: &str) -> Option<(i128, Format)> {
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
    let (mut exp10, mut bin, mut format): (i32, u32, Format) = (0, 0, Format::DecimalSi);
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
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            bin = 10 * (1 + ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].iter().position(|b| *b == suffix)? as u32);
            format = Format::BinarySi;
        }
        e => {
            exp10 = e.strip_prefix(['e', 'E'])?.parse().ok().filter(|x: &i32| x.abs() <= 30)?;
            format = Format::DecimalExponent;
        }
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Some((if neg { i128::MIN } else { i128::MAX }, format));
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
    Some((if neg { -v } else { v }, format))
}

impl Quantity {
    pub fn parse(s: &str) -> Option<Self> {
        parse(s).map(|(nanos, format)| Self { nanos, format })
    }

    /// A count of objects.
    pub fn count(n: i64) -> Self {
        Self { nanos: i128::from(n) * NANO, format: Format::DecimalSi }
    }

    pub fn zero() -> Self {
        Self::count(0)
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// The value as a float, for ratios (autoscaling).
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / NANO as f64
    }

    /// A value in thousandths (`250m`).
    pub fn from_millis(millis: i64) -> Self {
        Self { nanos: i128::from(millis) * (NANO / 1000), format: Format::DecimalSi }
    }

    /// The k8s-openapi form.
    pub fn to_k8s(self) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
        k8s_openapi::apimachinery::pkg::api::resource::Quantity(self.to_string())
    }
}

impl std::ops::Add for Quantity {
    type Output = Self;

    /// The sum, written as `self` is (as `other` when `self` is zero, as upstream).
    fn add(self, other: Self) -> Self {
        let format = if self.is_zero() { other.format } else { self.format };
        Self { nanos: self.nanos.saturating_add(other.nanos), format }
    }
}

impl fmt::Display for Quantity {
    /// Upstream's canonical form: binary suffixes only for whole values of at
    /// least 1024 written in binary, otherwise the largest power of 1000 (or
    /// `e<n>`) that keeps the number whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.nanos < 0 { "-" } else { "" };
        let magnitude = self.nanos.unsigned_abs();
        if self.format == Format::BinarySi && magnitude >= 1024 * NANO as u128 && magnitude.is_multiple_of(NANO as u128) {
            let (mut whole, mut power) = (magnitude / NANO as u128, 0);
            while power < 6 && whole.is_multiple_of(1024) {
                whole /= 1024;
                power += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
            return write!(f, "{sign}{whole}{suffix}");
        }
        if magnitude == 0 {
            return f.write_str("0");
        }
        let (mut amount, mut exponent) = (magnitude, -9i32);
        while amount.is_multiple_of(10) {
            amount /= 10;
            exponent += 1;
        }
        while exponent.rem_euclid(3) != 0 || exponent > 18 {
            amount *= 10;
            exponent -= 1;
        }
        if self.format == Format::DecimalExponent {
            return if exponent == 0 { write!(f, "{sign}{amount}") } else { write!(f, "{sign}{amount}e{exponent}") };
        }
        let suffix = match exponent {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            _ => "",
        };
        write!(f, "{sign}{amount}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(s: &str) -> String {
        Quantity::parse(s).unwrap().to_string()
    }

    #[test]
    fn quantities_print_in_upstreams_canonical_form() {
        for (input, expected) in [
            ("1000", "1k"),
            ("1500", "1500"),
            ("0.5", "500m"),
            ("100m", "100m"),
            ("1.5Gi", "1536Mi"),
            ("2048", "2048"),
            ("2Ki", "2Ki"),
            ("512Ki", "512Ki"),
            ("1000Ki", "1000Ki"),
            ("1Gi", "1Gi"),
            ("0.5Ki", "512"),
            ("1e3", "1e3"),
            ("1.5e3", "1500"),
            ("0", "0"),
            ("-2k", "-2k"),
            ("128974848", "128974848"),
        ] {
            assert_eq!(canonical(input), expected, "{input}");
        }
    }

    #[test]
    fn sums_keep_the_first_operands_format_and_compare_by_value() {
        let a = Quantity::parse("64Mi").unwrap() + Quantity::parse("64Mi").unwrap();
        assert_eq!(a.to_string(), "128Mi");
        let cpu = Quantity::parse("100m").unwrap() + Quantity::parse("0.2").unwrap();
        assert_eq!(cpu.to_string(), "300m");
        assert_eq!(Quantity::parse("1").unwrap(), Quantity::parse("1000m").unwrap());
        assert!(Quantity::parse("1Ki").unwrap() > Quantity::parse("1k").unwrap());
        assert_eq!(Quantity::count(3).to_string(), "3");
        assert_eq!((Quantity::zero() + Quantity::parse("256Mi").unwrap()).to_string(), "256Mi", "zero takes the other's format");
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

    #[test]
    fn malformed_quantities_are_refused() {
        for bad in ["", "abc", "1.2.3", "1Ki1", "1e", "--1", "1 k"] {
            assert!(Quantity::parse(bad).is_none(), "{bad}");
        }
    }
}
