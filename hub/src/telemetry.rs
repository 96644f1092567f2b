//! Logging setup: human-readable by default, JSON lines with `--log-json`; `RUST_LOG` filters.

use tracing_subscriber::EnvFilter;

/// `default_level` applies when `RUST_LOG` is not set.
pub fn init(json: bool, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colours only on a terminal: a log file or journald would keep the escape codes.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours);
    // A second init (tests calling into the library) is harmless: keep the first subscriber.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// At most one log line per second from one call site, for errors that come once per request
/// while a condition lasts (a full disk, an unreachable broker): at thousands of requests per
/// second they would flood the log, maybe onto the very disk that is full. The line that gets
/// through says how many were left out before it. (Written here: a global rate-limiting layer
/// such as `tracing-throttle` would also fold distinct per-delivery lines together.)
pub struct Throttle {
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle { state: std::sync::Mutex::new((None, 0)) }
    }

    /// `Some(left out since the last line)` when this call may log, `None` when it must not.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < std::time::Duration::from_secs(1) => {
                state.1 += 1;
                None
            }
            _ => {
                let skipped = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(skipped)
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn a_throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let t = Throttle::new();
        assert_eq!(t.allow(), Some(0));
        assert_eq!((t.allow(), t.allow()), (None, None));
        // As if a second had passed.
        t.state.lock().expect("lock").0 = Some(std::time::Instant::now() - std::time::Duration::from_secs(2));
        assert_eq!(t.allow(), Some(2));
        assert_eq!(t.allow(), None);
    }
}
