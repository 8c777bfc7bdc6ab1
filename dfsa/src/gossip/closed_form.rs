//! What the theory predicts for push gossip with a window.
//!
//! Closed forms of Amar, Barak, Drezner and Peer for a cluster of `n` nodes
//! where each node sends, every step, its own entry and a window of `w`
//! entries to one random node (as implemented in gossimon's libgossip).
//! All results are in steps.
//!
//! - `T = ((n-1)/n) ln(w(n-1)/(n-w))`: the age up to which entries are in
//!   windows;
//! - `X_T = n e^{nT/(n-1)} / (n-1+e^{nT/(n-1)})`: copies of a fresh entry
//!   after `T` steps;
//! - `A_w = T - ((n-1)/X_T)(ln(n-1+e^{nT/(n-1)}) - ln n)`: the mean age of
//!   window entries;
//! - expected average age `1/(1-(1-1/(n-1))^{X_T}) + A_w`;
//! - expected maximum age `-(ln n + 0.577)/(X_T ln(1-1/(n-1)))`.
//!
//! The forms hold for `n > w + 1`; for smaller clusters every message
//! carries nearly every entry and they return `None`.

fn t_given_w(n: f64, w: f64) -> f64 {
    ((n - 1.0) / n) * (w * (n - 1.0) / (n - w)).ln()
}

fn x_t(n: f64, t: f64) -> f64 {
    let e = (n * t / (n - 1.0)).exp();
    n * e / (n - 1.0 + e)
}

fn a_w(n: f64, t: f64) -> f64 {
    let e = (n * t / (n - 1.0)).exp();
    t - ((n - 1.0) / x_t(n, t)) * ((n - 1.0 + e).ln() - n.ln())
}

fn applicable(n: usize, w: usize) -> Option<(f64, f64)> {
    (n > w + 1 && w >= 1).then_some((n as f64, w as f64))
}

/// Expected average age of the entries a node holds, in steps.
pub fn expected_average_age(n: usize, w: usize) -> Option<f64> {
    let (n, w) = applicable(n, w)?;
    let t = t_given_w(n, w);
    let x = x_t(n, t);
    Some(1.0 / (1.0 - (1.0 - 1.0 / (n - 1.0)).powf(x)) + a_w(n, t))
}

/// Expected maximum age of the entries a node holds, in steps.
pub fn expected_max_age(n: usize, w: usize) -> Option<f64> {
    let (n, w) = applicable(n, w)?;
    let x = x_t(n, t_given_w(n, w));
    Some(-(n.ln() + 0.577) / (x * (1.0 - 1.0 / (n - 1.0)).ln()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derived figures quoted in the project's openMosix reference.
    #[test]
    fn reproduces_the_published_figures() {
        let close = |a: f64, b: f64, tolerance: f64| (a - b).abs() <= tolerance;
        let avg = expected_average_age(100, 16).unwrap();
        let max = expected_max_age(100, 16).unwrap();
        assert!(close(avg, 8.6, 0.1) && close(max, 32.0, 1.0), "{avg} {max}");
        let avg = expected_average_age(1000, 16).unwrap();
        let max = expected_max_age(1000, 16).unwrap();
        assert!(
            close(avg, 65.0, 1.0) && close(max, 467.0, 3.0),
            "{avg} {max}"
        );
        let avg = expected_average_age(1000, 64).unwrap();
        let max = expected_max_age(1000, 64).unwrap();
        assert!(
            close(avg, 19.0, 1.0) && close(max, 117.0, 2.0),
            "{avg} {max}"
        );
    }

    #[test]
    fn small_clusters_are_outside_the_model() {
        assert_eq!(expected_average_age(4, 16), None);
        assert_eq!(expected_max_age(17, 16), None);
        assert!(expected_max_age(18, 16).is_some());
    }
}
