//! The node's administrative switches (`admin/` of the control tree):
//! what `mosctl` and root's writes change at once, and what the daemon's
//! tasks consult before acting.

use std::sync::Mutex;
use std::time::Duration;

/// openMosix's default decay rates, per mille kept per decay interval.
pub const DEFAULT_SLOW_DECAY: u32 = 975;
pub const DEFAULT_FAST_DECAY: u32 = 926;
/// How often per-process statistics decay by default.
pub const DEFAULT_DECAY_INTERVAL: Duration = Duration::from_secs(1);
/// The longest decay interval accepted.
pub const MAX_DECAY_INTERVAL_S: u32 = 3600;

/// A value the settings refused, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decay {
    /// Seconds between two decays of the statistics.
    pub interval_s: u32,
    /// Per mille kept at each decay, for processes that decay slowly.
    pub slow: u32,
    /// Per mille kept at each decay, for processes that decay fast.
    pub fast: u32,
}

impl Default for Decay {
    fn default() -> Decay {
        Decay {
            interval_s: DEFAULT_DECAY_INTERVAL.as_secs() as u32,
            slow: DEFAULT_SLOW_DECAY,
            fast: DEFAULT_FAST_DECAY,
        }
    }
}

impl Decay {
    /// Checks a whole set of decay values: an interval of 1 s to an hour,
    /// rates of 0 to 1000 per mille, fast decay no slower than slow decay.
    pub fn validated(self) -> Result<Decay, Refused> {
        if !(1..=MAX_DECAY_INTERVAL_S).contains(&self.interval_s) {
            return Err(Refused(format!(
                "a decay interval of {} s is out of range: use 1 to {MAX_DECAY_INTERVAL_S} seconds",
                self.interval_s
            )));
        }
        for (name, rate) in [("slow", self.slow), ("fast", self.fast)] {
            if rate > 1000 {
                return Err(Refused(format!(
                    "a {name} decay of {rate} is out of range: it is the per mille kept, 0 to 1000"
                )));
            }
        }
        if self.fast > self.slow {
            return Err(Refused(format!(
                "fast decay ({}) would be slower than slow decay ({}): keep fast <= slow",
                self.fast, self.slow
            )));
        }
        Ok(self)
    }
}

/// The switches themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Switches {
    /// Refuse guests (new processes of other nodes).
    pub block: bool,
    /// Automatic placement moves no process of this node away.
    pub stay: bool,
    /// Like `stay`, for processes started here only (guests may move on).
    pub lstay: bool,
    /// Send no load information to other nodes.
    pub quiet: bool,
    pub decay: Decay,
}

/// The switches, shared by the daemon's tasks.
#[derive(Debug, Default)]
pub struct Settings {
    switches: Mutex<Switches>,
}

impl Settings {
    pub fn get(&self) -> Switches {
        *self.switches.lock().expect("settings lock")
    }

    /// Changes the switches with `change`, which may refuse; on refusal
    /// nothing changes.
    pub fn update(
        &self,
        change: impl FnOnce(&mut Switches) -> Result<(), Refused>,
    ) -> Result<(), Refused> {
        let mut switches = self.switches.lock().expect("settings lock");
        let mut changed = *switches;
        change(&mut changed)?;
        changed.decay = changed.decay.validated()?;
        *switches = changed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_change_changes_nothing() {
        let settings = Settings::default();
        settings
            .update(|s| {
                s.block = true;
                Ok(())
            })
            .unwrap();
        let refused = settings.update(|s| {
            s.quiet = true;
            s.decay.fast = 990;
            Ok(())
        });
        assert!(refused.unwrap_err().0.contains("fast decay (990)"));
        let now = settings.get();
        assert!(now.block);
        assert!(
            !now.quiet,
            "a refused update must not apply its other parts"
        );
        assert_eq!(now.decay, Decay::default());
    }

    #[test]
    fn decay_values_out_of_range_are_refused() {
        let bad = [
            Decay {
                interval_s: 0,
                ..Decay::default()
            },
            Decay {
                interval_s: MAX_DECAY_INTERVAL_S + 1,
                ..Decay::default()
            },
            Decay {
                slow: 1001,
                ..Decay::default()
            },
        ];
        for decay in bad {
            assert!(decay.validated().is_err(), "{decay:?} was accepted");
        }
        assert!(Decay::default().validated().is_ok());
    }
}
