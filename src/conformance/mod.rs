//! Checks HTTP exchanges against a provider's published OpenAPI description.
