//! Shared helpers for omx benchmarks: each benchmark is a binary in
//! `src/bin/` that measures side by side in one run and prints ratios.

/// Formats `a / b` as a ratio, or `-` when it is undefined.
pub fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b != 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// An optional figure, or `-`.
pub fn figure(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.1}"))
}
