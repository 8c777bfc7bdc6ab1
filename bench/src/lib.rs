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

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Paths of the `omx` binary and of `omx-bench-helper`, built beside the
/// running benchmark, for the lab benchmarks.
pub fn lab_binaries() -> (String, String) {
    let path = |p: std::path::PathBuf| p.to_str().expect("a UTF-8 path").to_string();
    (
        path(omx_tests::omx_bin()),
        path(omx_tests::sibling_binary("omx-bench-helper")),
    )
}
