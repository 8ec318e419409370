//! The operator's time limit (`timeout_seconds`), checked between batches, models and steps.
//! Past it, the staged work is thrown away: the installation has not changed.

use std::time::{Duration, Instant};

use crate::error::{MigrateError, Result};

pub struct Budget {
    deadline: Option<(Instant, Duration)>,
}

impl Budget {
    pub fn new(limit: Option<Duration>) -> Self {
        Budget {
            deadline: limit.map(|d| (Instant::now() + d, d)),
        }
    }

    pub fn check(&self, during: &str) -> Result<()> {
        match self.deadline {
            Some((at, limit)) if Instant::now() >= at => Err(MigrateError::TimedOut {
                limit_secs: limit.as_secs(),
                during: during.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}
