use super::{SaleWindow, UserId};

/// A coupon's counts and sale window (its holders are streamed separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub name: String,
    pub amount: i32,
    pub remaining_amount: i32,
    pub window: SaleWindow,
}

/// What one claim came to. The order of the variants is the order of the
/// checks: an unknown coupon first, then its sale window, then the user's
/// earlier claim, then stock. A claim with an idempotency key whose key is
/// recorded is answered before all of them: [`ClaimOutcome::Replayed`] or
/// [`ClaimOutcome::KeyMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    Claimed {
        remaining_amount: i32,
    },
    CouponNotFound,
    NotStarted,
    Expired,
    AlreadyClaimed,
    OutOfStock,
    /// The key was recorded by this same claim, which was granted then:
    /// its answer again.
    Replayed {
        remaining_amount: i32,
    },
    /// The key was recorded for another request.
    KeyMismatch,
}

/// Decides a batch of claims on one coupon exactly as handing them out one
/// at a time in arrival order would: `held` says whether a user already holds
/// the coupon, `remaining` is the stock before the batch. Returns each
/// claim's outcome and the users to insert, in order.
pub fn decide_in_order(
    users: &[UserId],
    mut held: impl FnMut(&UserId) -> bool,
    mut remaining: i32,
) -> (Vec<ClaimOutcome>, Vec<&UserId>) {
    let mut granted: Vec<&UserId> = Vec::new();
    let outcomes = users
        .iter()
        .map(|user| {
            if held(user) || granted.contains(&user) {
                ClaimOutcome::AlreadyClaimed
            } else if remaining > 0 {
                remaining -= 1;
                granted.push(user);
                ClaimOutcome::Claimed {
                    remaining_amount: remaining,
                }
            } else {
                ClaimOutcome::OutOfStock
            }
        })
        .collect();
    (outcomes, granted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(ids: &[&str]) -> Vec<UserId> {
        ids.iter().map(|id| UserId::parse(id).unwrap()).collect()
    }

    #[test]
    fn a_repeated_user_in_one_batch_is_already_claimed_even_when_stock_ran_out() {
        let batch = users(&["a", "b", "a", "c"]);
        let (outcomes, granted) = decide_in_order(&batch, |_| false, 1);
        assert_eq!(
            outcomes,
            vec![
                ClaimOutcome::Claimed {
                    remaining_amount: 0
                },
                ClaimOutcome::OutOfStock,
                ClaimOutcome::AlreadyClaimed,
                ClaimOutcome::OutOfStock,
            ]
        );
        assert_eq!(granted, vec![&batch[0]]);
    }

    #[test]
    fn earlier_holders_are_refused_before_stock_is_counted() {
        let batch = users(&["old", "new"]);
        let (outcomes, _) = decide_in_order(&batch, |u| u.as_str() == "old", 0);
        assert_eq!(
            outcomes,
            vec![ClaimOutcome::AlreadyClaimed, ClaimOutcome::OutOfStock]
        );
    }
}
