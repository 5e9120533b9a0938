//! When to renew the own lease, after flannel's `LocalManager.CompleteLease`: renew
//! `margin` minutes before expiry (`--subnet-lease-renew-margin`, default 60, valid 1..1439),
//! each renewal grants another 24 h, a failed renewal is retried after a minute, and losing
//! the own lease ("Lease has been revoked") stops the agent rather than keep routing a
//! subnet someone else may be handed.

use crate::Error;
use crate::lease::LEASE_TTL_SECS;

pub const DEFAULT_RENEW_MARGIN_MINUTES: u32 = 60;
pub const RETRY_AFTER_FAILURE_SECS: u64 = 60;

/// What the agent does when its own lease disappears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnOwnLeaseRemoved {
    Exit,
}

impl OnOwnLeaseRemoved {
    pub fn name(self) -> &'static str {
        match self {
            OnOwnLeaseRemoved::Exit => "exit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalPlan {
    /// Unix seconds.
    pub renew_at: u64,
    /// Unix seconds: the expiry after a renewal at `renew_at`.
    pub new_expiration: u64,
    pub retry_after_failure_secs: u64,
    pub on_own_lease_removed: OnOwnLeaseRemoved,
}

/// Plan the next renewal of a lease expiring at `expiration` (unix seconds).
pub fn plan_renewal(expiration: u64, margin_minutes: u32) -> Result<RenewalPlan, Error> {
    if margin_minutes == 0 || margin_minutes >= 24 * 60 {
        return Err(Error::RenewMargin {
            minutes: margin_minutes,
        });
    }
    let renew_at = expiration.saturating_sub(u64::from(margin_minutes) * 60);
    Ok(RenewalPlan {
        renew_at,
        new_expiration: renew_at + LEASE_TTL_SECS,
        retry_after_failure_secs: RETRY_AFTER_FAILURE_SECS,
        on_own_lease_removed: OnOwnLeaseRemoved::Exit,
    })
}
