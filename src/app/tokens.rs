//! Re-enrollment tokens as a credential: a token names exactly one user of one tenant, is good
//! for a bounded number of UpdateFace attempts over its whole life, and its holder learns nothing
//! about any other user. The auth layer admits a token through these calls before any image is
//! read; the enroll flow checks the request against the holder.

use super::users::hash_token;
use super::{App, blocking};
use crate::domain::{Tenant, UserId};
use crate::error::{Error, Reason, Result};

/// An admitted re-enrollment token: whose it is. Holds the token's hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHolder {
    pub tenant: Tenant,
    pub user_id: UserId,
    /// sha256 of the token, as stored.
    pub hash: [u8; 32],
}

/// The one answer to every token that cannot act: unknown, expired, spent, out of attempts, or
/// presented for another user or rpc. The same code and message whichever it is.
pub(super) fn invalid_token() -> Error {
    Error::unauthenticated(
        Reason::ReenrollmentTokenInvalid,
        "the re-enrollment token is unknown, used, expired, out of attempts or for another user",
    )
}

/// Whether `token` has the shape the server issues (`rt_` and 64 lowercase hex digits); anything
/// else is refused without a store lookup.
fn well_formed(token: &str) -> bool {
    token
        .strip_prefix("rt_")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

impl App {
    /// The holder of a token that exists, has not expired and has attempts left; spends nothing.
    pub async fn token_holder(&self, token: &str) -> Result<TokenHolder> {
        if !well_formed(token) {
            return Err(invalid_token());
        }
        let hash = hash_token(token);
        let (store, max) = (self.store()?, self.settings.token_max_attempts);
        let owner = blocking(move || store.token_user(&hash, max)).await?;
        let (tenant, user_id) = owner.ok_or_else(invalid_token)?;
        Ok(TokenHolder { tenant, user_id, hash })
    }

    /// Spends one of the token's attempts (durably), whatever the call then does with it.
    pub async fn use_token_attempt(&self, holder: &TokenHolder) -> Result<()> {
        let (store, hash, max) = (self.store()?, holder.hash, self.settings.token_max_attempts);
        let owner = blocking(move || store.use_token_attempt(&hash, max)).await?;
        match owner {
            Some((tenant, user_id)) if tenant == holder.tenant && user_id == holder.user_id => Ok(()),
            Some(_) | None => Err(invalid_token()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::well_formed;

    #[test]
    fn only_issued_token_shapes_are_looked_up() {
        let good = format!("rt_{}", "0123456789abcdef".repeat(4));
        assert!(well_formed(&good));
        for bad in [
            String::new(),
            "rt_".into(),
            good.to_uppercase(),
            format!("{good}0"),
            good.replacen("rt_", "xx_", 1),
            format!("rt_+{}", &good[4..]),
        ] {
            assert!(!well_formed(&bad), "{bad}");
        }
    }
}
