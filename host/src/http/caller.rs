//! Who may call a native route: an extractor that checks the caller's API key for one
//! right over every tenant, so a handler that takes it cannot run for anyone else and
//! no handler repeats the check.

use std::marker::PhantomData;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::authorize_global;
use crate::apikeys::Right;
use crate::broker::Broker;

/// The right a route needs, as a type, for [`Caller`].
pub trait Needs {
    /// The right.
    const RIGHT: Right;
}

macro_rules! rights {
    ($($name:ident => $right:expr),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($right), "` over every tenant.")]
        pub struct $name;
        impl Needs for $name {
            const RIGHT: Right = $right;
        }
    )*};
}

rights! {
    Admin => Right::Admin,
    MetricsRead => Right::MetricsRead,
    ConnectionsRead => Right::ConnectionsRead,
    ConnectionsWrite => Right::ConnectionsWrite,
}

/// A request's caller, holding `R`'s right over every tenant.
pub struct Caller<R>(PhantomData<R>);

impl<R: Needs> FromRequestParts<Broker> for Caller<R> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        b: &Broker,
    ) -> Result<Self, Response> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, b)
            .await
            .map_err(|e| {
                super::json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL_ERROR",
                    e.to_string(),
                )
            })?;
        authorize_global(b, &parts.headers, peer, R::RIGHT).map_err(IntoResponse::into_response)?;
        Ok(Self(PhantomData))
    }
}
