//! What a request costs: the tokens it will use before inference, and the tokens it did use
//! after the response.
//!
//! The limit stage reserves budget from an estimate; [`usage`] reads what the server actually
//! spent (from a JSON body or a server-sent-events stream) so the reservation can be settled
//! against real numbers instead of the estimate.

pub mod usage;
