//! Who a connection runs as: with authentication off, `local` reading
//! everything; with access tokens, the token's client and the resource
//! types its scopes may read.

use fhirlake_auth::{Permission, TokenIssuer, TokenRejection};
use fhirlake_engine::query::{GroupVisibility, ReadAccess};
use fhirlake_engine::sql::Login;

/// The login whose password is access token `password`, or why it is
/// refused (the message the client sees).
pub(crate) fn check_token(issuer: &TokenIssuer, user: Option<&str>, password: &str) -> Result<Login, String> {
    let grant = issuer.check(password.trim()).map_err(|rejection| match rejection {
        TokenRejection::Unknown => {
            "password authentication failed: the password must be a current access token from the FHIR server's /auth/token (tokens do not survive a server restart)"
                .to_string()
        }
        TokenRejection::Expired => {
            "password authentication failed: the access token has expired: request a new one from /auth/token".to_string()
        }
    })?;
    if let Some(user) = user
        && !user.is_empty()
        && user != grant.client_id
    {
        return Err(format!(
            "password authentication failed: the token was issued to client \"{}\", not to user \"{user}\"",
            grant.client_id
        ));
    }
    let granted = issuer
        .client(&grant.client_id)
        .map(|c| c.config.groups.clone())
        .unwrap_or_default();
    let groups = GroupVisibility::Only {
        owner: grant.client_id.clone(),
        granted,
    };
    let access = if grant.scopes.allows_all_types(Permission::Read) {
        ReadAccess::Everything
    } else {
        ReadAccess::Types(grant.scopes.named_types(Permission::Read).into_iter().collect())
    };
    Ok(Login {
        name: grant.client_id,
        access,
        groups,
    })
}

/// The login of a connection when authentication is off.
pub(crate) fn local(user: Option<&str>) -> Login {
    Login {
        name: format!("local:{}", user.unwrap_or("-")),
        access: ReadAccess::Everything,
        groups: GroupVisibility::All,
    }
}
