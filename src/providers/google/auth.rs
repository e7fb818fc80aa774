//! Application Default Credentials: where Google access tokens come from (an access token in
//! the environment, a service-account key file exchanged by the OAuth2 JWT-bearer grant, or
//! the metadata server on Google Cloud), each cached until shortly before it expires.
//!
//! SKELETON: being built.
