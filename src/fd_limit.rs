//! The process's file descriptor limit, and how the server shares it out.
//!
//! Linux starts most processes with a soft limit of 1,024 open files; a homeserver with
//! an embedded database reaches it with a few hundred clients and then fails every
//! `accept` (and, worse, the database fails to open a file and stops taking writes). At
//! start the soft limit is raised to the hard limit, and the client connection cap is
//! derived from what is left once the database and federation have their share.

/// Descriptors kept back for everything but the database's table files and client
/// connections: the WAL and manifest, the log, media files being read or written,
/// federation connections, the runtime's own.
pub const RESERVED: u64 = 256;

/// The fewest client connections the automatic cap allows.
const MIN_CONNECTIONS: u64 = 16;

/// The soft and hard limits before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The soft limit found at start.
    pub soft_before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; answers the limits (`None` when
/// they cannot be read).
pub fn raise() -> Option<Limits> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let soft_before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(Limits {
        soft_before,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// The client connections a soft limit of `soft` leaves room for, when the database may
/// keep `database_files` table files open.
pub fn connection_budget(soft: u64, database_files: u64) -> u64 {
    soft.saturating_sub(database_files + RESERVED)
        .max(MIN_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_the_database_and_a_reserve() {
        assert_eq!(connection_budget(1024, 512), 256);
        assert_eq!(connection_budget(1_048_576, 512), 1_048_576 - 768);
        assert_eq!(connection_budget(500, 512), 16, "never below the floor");
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let limits = raise().expect("limits are readable on Linux");
        assert_eq!(limits.soft, limits.hard);
        assert!(limits.soft >= limits.soft_before);
    }
}
